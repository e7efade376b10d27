# Fuzzing each platform's downlink handler: random and mutated topics (built from the
# adapter's own subscriptions) and payloads (random bytes, odd JSON, mutated JSON) through
# one long-lived Adapter.handle per platform. The contract (docs/internals.md): a Command or
# None, or ValueError with the reason; never another exception (the app would only log
# it, but it means a case nobody thought about), never a hang, the heap bounded however many
# downlinks arrive. Commands that come out must be well formed, their reply() must work,
# and a Blynk redirect must name a URL the transport can open. Seeded: FUZZ_SEED, FUZZ_CASES.
import gc
import json
import random

from mptest import env, heapsize
from platform_fakes import adapter
from uplink import transport
from uplink.platforms import Command

SEED = int(env("FUZZ_SEED", "8"))
CASES = int(env("FUZZ_CASES", "2000"))

CFGS = {
    "thingsboard": {"token": "t", "gateway_devices": ["A", "B"], "shared_attributes": ["led"]},
    "blynk": {"token": "t", "template_id": "TMPL1", "template_name": "T", "gateway_tokens": {"A": "ta"}},
    "weightron": {"application_id": "app", "device_id": "d", "token": "t", "command_topic": "app/cmd"},
    "biotz": {"device_id": "d", "customer_id": "c", "password": "p"},
}
SEGMENTS = ["1", "42", "0", "-1", "", "x", "99999999999999999999", "redirect", "reboot", "ping", "ds", "V1",
            "ota", "json", "utc", "all", "update", "firmware", "ta", "A", "\u2603", "a b", "%s", "+", "#"]
TAILS = ["redirect", "reboot", "ping", "ds/V1", "ds/", "ds", "ota/json", "utc/all/json", "x/y", "", "ds/V1/x",
         "rpc", "attributes"]
VALUES = [None, True, False, 0, -1, 1.5, 2 ** 40, 1e308, "", "x", "on", "x" * 200, [], [1, "a"], {}, {"a": {"b": []}},
          "mqtt://h:1", "mqtts://h", "wss://h/mqtt", "ws://:1", "mqtt://", "http://h"]
KEYS = ["method", "params", "id", "device", "data", "shared", "client", "serverTime", "maxPayloadSize",
        "url", "download-url", "value", "values", "name", "ts", "interval_s", "reply", "x"]


def rnd(n):
    return random.getrandbits(16) % n if n else 0


def pick(seq):
    return seq[rnd(len(seq))]


def topic_from(filt):
    parts = []
    for level in filt.split("/"):
        if level == "+":
            parts.append(pick(SEGMENTS))
        elif level == "#":
            parts.append(pick(TAILS))
        else:
            parts.append(level)
    t = "/".join(parts)
    if rnd(8) == 0 and t:  # mutated
        i = rnd(len(t))
        t = t[:i] + pick(["", "/", "x", "\u00e9", "//"]) + t[i + 1 :]
    return t


def json_doc():
    d = {}
    for _ in range(rnd(5)):
        d[pick(KEYS)] = pick(VALUES) if rnd(3) else {pick(KEYS): pick(VALUES)}
    if rnd(2):
        d["method"] = pick(["setLed", "reboot", "ping", "status", "set_interval", "getTime", "", "x" * 70, 5])
    return pick([d, d, [d], pick(VALUES)])


def payload():
    r = rnd(6)
    if r == 0:
        return bytes(random.getrandbits(8) for _ in range(rnd(40)))
    if r == 1:
        return json.dumps(pick(VALUES)).encode()
    text = json.dumps(json_doc())
    if r == 2 and text:
        b = bytearray(text.encode())
        for _ in range(1 + rnd(3)):
            b[rnd(len(b))] = random.getrandbits(8)
        return bytes(b[: rnd(len(b) + 1)] if rnd(2) else b)
    return text.encode()


def check(a, kind, topic, data, retained, counts):
    try:
        cmd = a.handle(topic, data, retained)
    except ValueError as e:  # UnicodeError is a ValueError too
        assert str(e), (kind, topic, data)
        counts[0] += 1
        return
    except Exception as e:
        raise AssertionError("%s handle(%r, %r) raised %s: %s" % (kind, topic, data, type(e).__name__, e))
    if cmd is None:
        counts[1] += 1
        return
    counts[2] += 1
    where = "%s handle(%r, %r) -> %r" % (kind, topic, data, cmd)
    assert isinstance(cmd, Command), where
    assert isinstance(cmd.name, str) and cmd.name, where
    assert isinstance(cmd.params, dict), where
    if cmd.name == "redirect" and kind == "blynk" and cmd.device is None:
        # Blynk's own redirect was checked by the adapter: the client must be able to use it
        # (elsewhere an RPC or action named "redirect" is checked by commands.execute)
        transport.parse_url(cmd.params["url"])
    if cmd.name == "set_interval":
        assert cmd.params["interval_s"] > 0, where
    for result in ({"ok": True}, None, "done", {"error": "unknown command"}, [1, 2]):
        try:
            r = a.reply(cmd, result)
        except Exception as e:
            raise AssertionError("%s reply(%r) raised %s: %s" % (where, result, type(e).__name__, e))
        if r is not None:
            assert isinstance(r[0], str) and isinstance(r[1], (bytes, bytearray)), (where, r)


def fuzz(kind):
    random.seed(SEED + len(kind))
    a = adapter(kind, **CFGS[kind])
    filters = [t for t, _ in a.subscriptions()] + ["v1/devices/me/rpc/request/+", "downlink/#", "#", "+/+"]
    counts = [0, 0, 0]  # ValueError, None, Command

    def case():
        check(a, kind, topic_from(pick(filters)), payload(), rnd(4) == 0, counts)

    for _ in range(100):
        case()
    gc.collect()
    before = gc.mem_free()
    for _ in range(CASES):
        case()
    gc.collect()
    grown = before - gc.mem_free()
    print("%s downlink fuzz: %d cases: %d ValueError, %d None, %d Command; heap +%d"
          % (kind, CASES, counts[0], counts[1], counts[2], grown))
    assert counts[0] and counts[2], counts  # refusals and commands both exercised
    assert grown < 2048, "%s: heap grew by %d bytes over %d downlinks" % (kind, grown, CASES)


def test_fuzz_thingsboard_downlinks():
    fuzz("thingsboard")


def test_fuzz_blynk_downlinks():
    fuzz("blynk")


def test_fuzz_weightron_downlinks():
    fuzz("weightron")


@heapsize("128k")
def test_fuzz_biotz_downlinks():
    fuzz("biotz")
