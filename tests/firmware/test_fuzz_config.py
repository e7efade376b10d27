# Fuzzing the config loader: random text, mutated JSON text and structurally mutated
# documents through config.parse (and config.load from a file with random bytes). Only
# ConfigError may come out: anything else would crash the boot instead of entering safe mode
# with a reason. Documents that pass go on to their platform's Adapter constructor, which
# may refuse with ConfigError only (docs/internals.md). Seeded: FUZZ_SEED, FUZZ_CASES.
import gc
import json
import random

from mptest import env, heapsize
from platform_fakes import Ctx
from uplink import config, platforms

SEED = int(env("FUZZ_SEED", "8"))
CASES = int(env("FUZZ_CASES", "2000"))

VALID = {
    "device": {"name": "greenhouse-1", "board": "esp32-devkitc"},
    "wifi": {"networks": [{"ssid": "home", "password": "pw"}, {"ssid": "shop"}], "timeout_s": 20},
    "ntp": {"servers": ["pool.ntp.org"], "resync_s": 3600, "timeout_ms": 2000},
    "platform": {"kind": "thingsboard", "url": "mqtts://mqtt.thingsboard.cloud:8883", "ca": "ca.der",
                 "insecure": False, "keepalive": 60, "client_id": "gh1", "token": "t0k3n",
                 "credentials": {"source": "static", "username": "u", "password": "p"}},
    "telemetry": {"interval_s": 30, "interval_ms": 500, "health": True, "batch": 20},
    "outbox": {"max_bytes": 32768, "dir": "outbox"},
}
PLATFORMS = {
    "thingsboard": {"token": "t", "gateway_devices": ["A", "B"], "shared_attributes": ["x"],
                    "claim_secret": "s", "max_payload": 4096},
    "blynk": {"token": "t", "template_id": "TMPL1", "template_name": "T", "gateway_tokens": {"A": "ta"},
              "sync": ["V1"]},
    "weightron": {"application_id": "app", "device_id": "d", "token": "t", "fields": {"t": "temp"},
                  "command_topic": "app/cmd"},
    "biotz": {"device_id": "d", "customer_id": "c", "password": "p", "action_types": ["+"]},
}
ODD = [None, True, False, 0, -1, 1, 2 ** 31, 2 ** 64, -(2 ** 63), 1.5, -0.0, 1e308, "", "x", "x" * 300,
       "mqtt://", "mqtts://h:1", "ws://[::1]:80/p", "https://", "static", "relay", "\u00e9\u2603", [], [1], [None],
       [""], ["a", 3], {}, {"a": 1}, {"": None}, {"kind": "blynk"}, [[[[]]]]]


def rnd(n):
    return random.getrandbits(16) % n if n else 0


def pick(seq):
    return seq[rnd(len(seq))]


def doc():
    d = json.loads(json.dumps(VALID))
    kind = pick(list(PLATFORMS))
    d["platform"]["kind"] = kind
    d["platform"].pop("token")
    d["platform"].update(json.loads(json.dumps(PLATFORMS[kind])))
    return d


def paths(obj, here=()):
    out = [here]
    if isinstance(obj, dict):
        for k in obj:
            out += paths(obj[k], here + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += paths(v, here + (i,))
    return out


def mutate_structure(d):
    for _ in range(1 + rnd(3)):
        ps = paths(d)
        p = pick(ps[1:]) if len(ps) > 1 else ()
        parent = d
        for k in p[:-1]:
            parent = parent[k]
        if not p:
            return pick(ODD)
        k = p[-1]
        r = rnd(6)
        if r == 0 and isinstance(parent, dict):
            del parent[k]
        elif r == 1 and isinstance(parent, dict):
            parent[pick(["kind", "nme", "url", "Token", "", "\u2603", "x" * 40, "networks"])] = pick(ODD)
        elif r == 2:
            parent[k] = pick(list(PLATFORMS) + ["aws", ""]) if k == "kind" else pick(ODD)
        else:
            parent[k] = pick(ODD)
    return d


def mutate_text(t):
    b = bytearray(t.encode())
    for _ in range(1 + rnd(6)):
        r = rnd(4)
        i = rnd(len(b) + 1)
        if r == 0 and b:
            b[min(i, len(b) - 1)] = pick(b'{}[]",:0123456789.-etrufnal\\ \x00')
        elif r == 1:
            b[i:i] = bytes([pick(b'{}[]",:0-9e\\')])
        elif r == 2:
            b = b[:i] + b[i + rnd(8) :]
        else:
            b = b[:i]
    try:
        return b.decode()
    except UnicodeError:
        return "".join(chr(c) for c in b)


def random_text():
    return "".join(chr(pick(b' {}[]",:0123456789.-etrufnalx\\/')) for _ in range(rnd(60)))


def one(i):
    r = i % 4
    if r == 0:
        return random_text()
    if r == 1:
        return mutate_text(json.dumps(doc()))
    return json.dumps(mutate_structure(doc()))


def check(text, counts):
    try:
        cfg = config.parse(text, platforms.SCHEMAS)
    except config.ConfigError as e:
        assert str(e), text
        counts[0] += 1
        return
    except Exception as e:
        raise AssertionError("config.parse raised %s: %s on %r" % (type(e).__name__, e, text))
    counts[1] += 1
    try:
        platforms.load(cfg["platform"]["kind"]).Adapter(cfg, Ctx())
    except config.ConfigError:
        counts[2] += 1
    except Exception as e:
        raise AssertionError("%s Adapter raised %s: %s on %r" % (cfg["platform"]["kind"], type(e).__name__, e, text))


@heapsize("192k")  # every platform module at once; a board imports one
def test_fuzz_config_parse_only_config_error():
    random.seed(SEED)
    counts = [0, 0, 0]  # refused, accepted, refused by the adapter
    for k in PLATFORMS:  # warm up: every platform module imported before measuring the heap
        platforms.load(k)
    for _ in range(8):
        config.parse(json.dumps(doc()), platforms.SCHEMAS)  # the unmutated documents pass
    for i in range(50):
        check(one(i), counts)
    gc.collect()
    before = gc.mem_free()
    for i in range(CASES):
        check(one(i), counts)
    gc.collect()
    grown = before - gc.mem_free()
    print("config fuzz: %d cases, %d refused, %d accepted (%d refused by the adapter), heap +%d"
          % (CASES, counts[0], counts[1], counts[2], grown))
    assert counts[0] and counts[1], counts  # both outcomes exercised
    assert grown < 4096, "heap grew by %d bytes over %d cases" % (grown, CASES)


@heapsize("192k")
def test_fuzz_config_load_file_of_random_bytes():
    random.seed(SEED + 1)
    base = json.dumps(doc()).encode()
    for i in range(300):
        if i % 2:
            data = bytes(random.getrandbits(8) for _ in range(rnd(80)))
        else:
            b = bytearray(base)
            for _ in range(1 + rnd(4)):
                b[rnd(len(b))] = random.getrandbits(8)  # flash bit rot, non-UTF-8 bytes included
            data = bytes(b)
        with open("fuzz_config.json", "wb") as f:
            f.write(data)
        try:
            config.load("fuzz_config.json", platforms.SCHEMAS)
        except config.ConfigError:
            pass
        except Exception as e:
            raise AssertionError("config.load raised %s: %s on %r" % (type(e).__name__, e, data))


def test_config_error_is_one_class_across_the_boot_unload():
    # runner.py unloads uplink.config after boot; modules imported later (ThingsBoard
    # provisioning, credentials) import it again. Their ConfigError must still be the one
    # runner.run catches, or a refused provisioning crash-loops instead of entering safe mode.
    import sys

    from uplink import runner

    C = runner.ConfigError
    sys.modules.pop("uplink.config", None)  # as the transient around runner.load_config does
    sys.modules.pop("uplink.platforms.tb_provision", None)
    from uplink.platforms import tb_provision

    assert issubclass(tb_provision.ProvisionError, C)
    from uplink import config as again

    assert again.ConfigError is C
