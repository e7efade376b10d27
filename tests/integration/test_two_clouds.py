"""One device, two clouds at once (config `platforms`): the whole firmware on the host board,
ThingsBoard and Blynk each behind its broker profile on its own mosquitto. Both clouds get
every reading; commands from either reach handle() with cmd.platform naming it, and the
reply goes back to the cloud that asked.

The chaos run kills one broker three times while the other stays up, then the reverse:
nothing is lost on either cloud, the one that stays up keeps getting readings during the
other's outages, and resends stay a few per cut (duplicates are counted, a storm fails).
Also: the main cloud down at boot holds up no other; a cloud removed from the config no
longer holds readings on flash, and the one that stays keeps its place."""

from __future__ import annotations

import json

import pytest

from tests.integration.broker_profiles import Biotz, Blynk, ProfileProxy, ThingsBoard
from tests.integration.hostboard import HostBoard
from tests.ledger import Observer, outbox_readings, show
from tests.services import Mosquitto, mosquitto_bin

pytestmark = pytest.mark.skipif(mosquitto_bin() is None, reason="mosquitto not installed")

TB_TOKEN = "tb-two-t0ken"
BL_TOKEN = "bl-two-t0ken"
TMPL = "TMPL2clouds"

# one value per reading: Blynk sends it as ds/seq (or ds/seq/timestamped_batch for a backlog)
USER = """
_n = [0]

def read():
    _n[0] += 1
    return {"seq": _n[0]}

def handle(cmd):
    print("HANDLED %s %s" % (cmd.platform, cmd.name))
    if cmd.name == "write":
        return cmd.params["value"]
    if cmd.name == "echo":
        return {"echo": cmd.params, "platform": cmd.platform}
    return None
"""


def two_cloud_config(tb_url: str, bl_url: str, interval_ms: int = 200) -> dict:
    return {
        "device": {"name": "two-cloud-dev", "board": "host"},
        "ntp": {"servers": []},
        "platforms": [
            {"kind": "thingsboard", "url": tb_url, "token": TB_TOKEN},
            {"kind": "blynk", "url": bl_url, "token": BL_TOKEN, "template_id": TMPL, "template_name": "Two"},
        ],
        "telemetry": {"interval_ms": interval_ms, "health": False},
        "outbox": {"max_bytes": 200000},
    }


def tb_seqs(obs: Observer) -> list[int]:
    out = []
    for topic, payload in list(obs.msgs):
        if topic == "up/v1/devices/me/telemetry":
            doc = json.loads(payload)
            for r in doc if isinstance(doc, list) else [doc]:
                v = r.get("values", r)
                if "seq" in v:
                    out.append(v["seq"])
    return out


def blynk_seqs(obs: Observer) -> list[int]:
    out = []
    for topic, payload in list(obs.msgs):
        if topic == "up/ds/seq":
            out.append(int(payload))
        elif topic == "up/ds/seq/timestamped_batch":
            out += [int(v) for _, v in json.loads(payload)]
        elif topic == "up/batch_ds":
            out.append(json.loads(payload)["seq"])
    return out


class Cloud:
    """One cloud: a mosquitto, the platform's profile proxy in front, an observer behind."""

    def __init__(self, tmp, name, profile):
        self.name = name
        self.broker = Mosquitto(tmp / name).start()
        self.proxy = ProfileProxy(profile, self.broker.ports["mqtt"]).start()
        self.obs = Observer(self.broker.ports["mqtt"], ["up/#"], client_id="obs-" + name)
        self.kills = 0

    def send(self, topic, payload):
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload)
        self.obs.c.publish("down/" + topic, payload, 1).wait_for_publish(5)

    def kill(self, board, seqs, other_seqs) -> None:
        """One outage. The proxy stops reading the device first, so the observer has every
        message the broker acknowledged before the broker dies (a SIGKILLed mosquitto
        forgets what it had not forwarded yet: a loss the device did not cause)."""
        self.proxy.hold(True)
        self.obs.quiet(0.5)
        n = self.obs.subscribed
        self.broker.kill()
        self.kills += 1
        # the other cloud keeps getting readings meanwhile
        before = max(other_seqs() or [0])
        assert Observer.wait(lambda: max(other_seqs() or [0]) >= before + 5, 20), \
            f"the other cloud stalled while {self.name} was down\n" + board.console()
        self.broker.start()
        assert self.obs.wait(lambda: self.obs.subscribed > n, 20), f"{self.name} observer did not come back"
        self.proxy.hold(False)

    def close(self):
        self.obs.close()
        self.proxy.stop()
        self.broker.stop()


@pytest.fixture
def clouds(tmp_path):
    made = []

    def make(name, profile):
        c = Cloud(tmp_path, name, profile)
        made.append(c)
        return c

    yield make
    for c in reversed(made):
        c.close()


# A device on two clouds is held to the host board's usual 128k, the budget of a bare ESP32.
# A second cloud costs ~14 KB of heap (its adapter, uplink.sessions, a client and publisher:
# make bench BENCH_ARGS=twocloud); it fits since the OTA updater and Blynk's gateway and
# uplink.cloud code are loaded only when used (before, 144k was needed: docs/config.md).
TWO_CLOUD_HEAP = "128k"


def start_board(tmp_path, tb, bl, **kw) -> HostBoard:
    # on an esp32-devkitc's memory (the model's chip mode, the GC heap growing into the IDF heap as
    # on the chip): the chaos test's catch-up after a cloud comes back outgrew the fixed 128k
    # once every change of issues 23-28 was in (a MemoryError, then a 15 s backoff)
    cfg = two_cloud_config(tb.proxy.url(), bl.proxy.url(), **kw)
    cfg["device"]["board"] = "esp32-devkitc"
    return HostBoard(tmp_path / "board", cfg, user_py=USER, heapsize=None).start()


def test_both_clouds_get_every_reading_and_commands_name_their_platform(tmp_path, clouds):
    tb = clouds("thingsboard", ThingsBoard({TB_TOKEN: "device"}))
    bl = clouds("blynk", Blynk({BL_TOKEN}, template_id=TMPL))
    board = start_board(tmp_path, tb, bl)
    try:
        for c, seqs in ((tb, lambda: tb_seqs(tb.obs)), (bl, lambda: blynk_seqs(bl.obs))):
            assert Observer.wait(lambda s=seqs: len(set(s())) >= 15, 30), c.name + "\n" + board.console()
        # a command from each cloud reaches handle() with its platform, and is answered there
        tb.send("v1/devices/me/rpc/request/7", {"method": "echo", "params": {"x": 1}})
        board.wait_for_line("HANDLED thingsboard echo")
        assert Observer.wait(lambda: any(t == "up/v1/devices/me/rpc/response/7" for t, _ in list(tb.obs.msgs)))
        reply = [p for t, p in list(tb.obs.msgs) if t == "up/v1/devices/me/rpc/response/7"][0]
        assert json.loads(reply) == {"echo": {"x": 1}, "platform": "thingsboard"}
        bl.send("downlink/ds/Setpoint", "22.5")
        board.wait_for_line("HANDLED blynk write")
        assert Observer.wait(lambda: any(t == "up/ds/Setpoint" for t, _ in list(bl.obs.msgs)))
        assert not any(t.endswith("Setpoint") for t, _ in list(tb.obs.msgs))  # not to the other cloud
        # status names where each platform stands
        tb.send("v1/devices/me/rpc/request/8", {"method": "status", "params": {}})
        assert Observer.wait(lambda: any(t == "up/v1/devices/me/rpc/response/8" for t, _ in list(tb.obs.msgs)))
        st = json.loads([p for t, p in list(tb.obs.msgs) if t == "up/v1/devices/me/rpc/response/8"][0])
        assert set(st["platforms"]) == {"thingsboard", "blynk"}
        for name in ("thingsboard", "blynk"):
            assert st["platforms"][name]["connected"] is True and st["platforms"][name]["acked"] > 0
        top = max(tb_seqs(tb.obs))
        for c, seqs in ((tb, lambda: tb_seqs(tb.obs)), (bl, lambda: blynk_seqs(bl.obs))):
            assert Observer.wait(lambda s=seqs: set(range(1, top + 1)) <= set(s()), 30), \
                f"{c.name} missed {sorted(set(range(1, top + 1)) - set(seqs()))[:20]}"
        assert tb.proxy.violations == [] and bl.proxy.violations == []
        assert "gc_free" in st
        print("two sessions: gc_free %d" % st["gc_free"])
    finally:
        board.stop()


def test_chaos_one_cloud_killed_three_times_then_the_other(tmp_path, clouds, capsys):
    tb = clouds("thingsboard", ThingsBoard({TB_TOKEN: "device"}))
    bl = clouds("blynk", Blynk({BL_TOKEN}, template_id=TMPL))
    board = start_board(tmp_path, tb, bl, interval_ms=50)
    seqs = {"thingsboard": lambda: tb_seqs(tb.obs), "blynk": lambda: blynk_seqs(bl.obs)}
    try:
        assert Observer.wait(lambda: len(set(seqs["thingsboard"]())) >= 20 and len(set(seqs["blynk"]())) >= 20,
                             30), board.console()
        for down, up in ((tb, bl), (bl, tb)):
            for _ in range(3):
                down.kill(board, seqs[down.name], seqs[up.name])
                # back: it catches up, the other never stopped
                mark = max(seqs[up.name]())
                assert Observer.wait(lambda d=down, m=mark: set(range(1, m + 1)) <= set(seqs[d.name]()), 60), \
                    f"{down.name} did not catch up to {mark}: missing " \
                    f"{sorted(set(range(1, mark + 1)) - set(seqs[down.name]()))[:20]}\n" + board.console()
        top = max(seqs["thingsboard"]())
        rows = []
        for c in (tb, bl):
            assert Observer.wait(lambda c=c: set(range(1, top + 1)) <= set(seqs[c.name]()), 60), board.console()
            got = seqs[c.name]()
            uniq = set(got)
            lost = sorted(set(range(1, top + 1)) - uniq)
            dup = len(got) - len(uniq)
            rows.append(f"{c.name:12} readings {len(uniq):5}  lost {len(lost)}  duplicates {dup:3}  "
                        f"outages {c.kills}  connects {len(c.proxy.accepted())}")
            assert not lost, f"{c.name} lost {lost[:20]}"
            # a reconnect resends what was in flight (8 messages of up to 1 KB each); a storm
            # would be whole backlogs sent again
            assert dup <= 6 * 8 * 20, f"{c.name}: {dup} duplicates over {len(uniq)} readings"
            assert c.proxy.violations == []
        show(capsys, "two clouds, each broker SIGKILLed x3 while the other stays up\n" + "\n".join(rows))
        # commands from both after all that
        tb.send("v1/devices/me/rpc/request/9", {"method": "echo", "params": {}})
        bl.send("downlink/ds/Setpoint", "1")
        board.wait_for_line("HANDLED thingsboard echo")
        board.wait_for_line("HANDLED blynk write")
    finally:
        board.stop()


# Two TLS sessions on the ESP32 model, at 128k too (mbedTLS's buffers outside the GC heap: in
# libc with -X heapsize, in the chip's IDF pool with -X chip). Before the lazy loading above, one run in four had the
# second session's TLS connect meet "memory allocation failed" for tens of seconds there.
# make bench BENCH_ARGS=twocloud prints gc_free at 128k.
TWO_TLS_HEAP = TWO_CLOUD_HEAP


@pytest.mark.parametrize("board_id", ["host", "esp32-s3"])
def test_two_tls_sessions_fit_the_esp32_heap(tmp_path, capsys, board_id):
    # Both clouds over mqtts on the ESP32 model: both get every reading, and the firmware
    # keeps running. A MemoryError pause now and then is survived by design (publisher.py);
    # they are counted, not asserted. "host": the fixed 128k heap; esp32-s3: that chip's
    # memory (-X chip), the board validate names for two TLS clouds (an esp32-devkitc is refused).
    broker = Mosquitto(tmp_path / "broker").start()
    obs = Observer(broker.ports["mqtt"], ["v1/devices/me/telemetry", "ds/#"], client_id="obs-tls")
    cfg = two_cloud_config(broker.url("mqtts"), broker.url("mqtts"), interval_ms=250)
    cfg["device"]["board"] = board_id
    for p in cfg["platforms"]:
        p["ca"] = "ca.der"
    # one plain broker plays both clouds: no client RPC (it would come back as a server
    # RPC), and two client ids
    cfg["platforms"][0]["client_rpc"] = False
    cfg["platforms"][1]["client_id"] = "two-cloud-blynk"
    board = HostBoard(tmp_path / "board", cfg, user_py=USER, heapsize=TWO_TLS_HEAP,
                      files={"ca.der": broker.pki.ca_der.read_bytes()}).start()
    tb = lambda: tb_seqs_of(obs)  # noqa: E731
    try:
        assert Observer.wait(lambda: len(set(tb())) >= 40 and len(set(blynk_seqs_of(obs))) >= 40, 60), \
            board.console()
        top = max(tb())
        for name, got in (("thingsboard", tb), ("blynk", lambda: blynk_seqs_of(obs))):
            assert Observer.wait(lambda g=got: set(range(1, top + 1)) <= set(g()), 30), \
                f"{name} missed {sorted(set(range(1, top + 1)) - set(got()))[:20]}\n" + board.console()
        assert board.proc.poll() is None
        where = f"{board_id} memory (-X chip={board.chip})" if board.chip else TWO_TLS_HEAP
        show(capsys, f"two TLS sessions at {where} on the ESP32 model: {top} readings to each cloud, "
                     f"{board.console().count('MemoryError')} MemoryError pauses")
    finally:
        board.stop()
        obs.close()
        broker.stop()


def tb_seqs_of(obs: Observer) -> list[int]:
    # tb_seqs/blynk_seqs for an observer straight on the broker (no profile proxy: no up/)
    return tb_seqs(_Prefixed(obs))


def blynk_seqs_of(obs: Observer) -> list[int]:
    return blynk_seqs(_Prefixed(obs))


class _Prefixed:
    def __init__(self, obs):
        self.msgs = [("up/" + t, p) for t, p in list(obs.msgs)]


BOOT_USER = """
try:
    with open("boot_n") as f:
        _boot = int(f.read()) + 1
except (OSError, ValueError):
    _boot = 1
with open("boot_n", "w") as f:
    f.write(str(_boot))
_n = [0]

def read():
    _n[0] += 1
    return {"seq": _boot * 100000 + _n[0]}
"""


def test_main_cloud_down_at_boot_then_removed_cloud_frees_the_outbox(tmp_path, clouds):
    tb = clouds("thingsboard", ThingsBoard({TB_TOKEN: "device"}))
    bl = clouds("blynk", Blynk({BL_TOKEN}, template_id=TMPL))
    tb.broker.kill()  # the main cloud is down when the board boots
    cfg = two_cloud_config(tb.proxy.url(), bl.proxy.url())
    board = HostBoard(tmp_path / "board", cfg, user_py=BOOT_USER, heapsize=TWO_CLOUD_HEAP).start()
    try:
        # the other cloud does not wait for it
        assert Observer.wait(lambda: len(set(blynk_seqs(bl.obs))) >= 10, 30), board.console()
        n = tb.obs.subscribed
        tb.broker.start()
        assert tb.obs.wait(lambda: tb.obs.subscribed > n, 20)
        top = max(blynk_seqs(bl.obs))
        assert Observer.wait(lambda: set(range(100001, top + 1)) <= set(tb_seqs(tb.obs)), 30), board.console()
        # now Blynk goes away for good: its cursor holds a growing backlog on flash
        bl.broker.kill()
        # 20 readings newer than any Blynk got: ThingsBoard's own newest can lag behind Blynk's
        # on a loaded machine, and readings that were still draining to it were Blynk's already
        mark = max(max(tb_seqs(tb.obs)), max(blynk_seqs(bl.obs)))
        assert Observer.wait(lambda: max(tb_seqs(tb.obs)) >= mark + 20, 30), board.console()
        board.stop()
        held, _ = outbox_readings(board.state)
        # what Blynk never acknowledged is still on flash (less the last hold_ms of readings,
        # still in RAM when the board is stopped: outbox.py)
        assert len(held) >= 10, held
        # the config drops Blynk: its cursor no longer holds anything back
        one = dict(cfg)
        del one["platforms"]
        one["platform"] = cfg["platforms"][0]
        (board.state / "config.json").write_text(json.dumps(one))
        before = len(tb_seqs(tb.obs))
        board.start()
        # (running past the supervisor's 5 s flush: the state on flash is what is checked)
        assert Observer.wait(lambda: sum(1 for s in tb_seqs(tb.obs) if s > 200000) >= 40, 30), board.console()
        board.stop()
        held, dropped = outbox_readings(board.state)
        # nothing of boot 1 is held any more (what is, is this boot's not yet acknowledged)
        assert all(seq > 200000 for _, seq in held) and dropped == 0, held
        # ThingsBoard kept its own place: boot 1's readings were not sent to it again
        again = [s for s in tb_seqs(tb.obs)[before:] if s < 200000]
        assert len(again) <= 16, again  # at most the acks not yet persisted (outbox.ACK_PERSIST)
    finally:
        board.stop()


CLOUD_USER = """
from uplink import cloud

def read():
    return {"seq": 1}

async def handle(cmd):
    if cmd.name == "note":
        await cloud.set_attributes({"note": cmd.params["n"]})  # ThingsBoard's
        await cloud.event("noted", "note %d" % cmd.params["n"])  # Blynk's
        print("NOTED %d" % cmd.params["n"])
        return {"ok": True}
    return None
"""


def test_user_records_go_to_their_own_cloud_only(tmp_path, clouds):
    # uplink.cloud's client attributes are ThingsBoard's and log events Blynk's: through the
    # one outbox, each reaches its own cloud; the other cloud's publisher passes it by
    # without calling it undeliverable
    tb = clouds("thingsboard", ThingsBoard({TB_TOKEN: "device"}))
    bl = clouds("blynk", Blynk({BL_TOKEN}, template_id=TMPL))
    cfg = two_cloud_config(tb.proxy.url(), bl.proxy.url(), interval_ms=1000)
    # on an esp32-devkitc's memory (the model's chip mode): two plain-MQTT clouds and
    # uplink.cloud have outgrown the fixed 128k (issue 23), and grow into the IDF heap as on the chip
    cfg["device"]["board"] = "esp32-devkitc"
    board = HostBoard(tmp_path / "board", cfg, user_py=CLOUD_USER, heapsize=None).start()
    try:
        for c in (tb, bl):  # both sessions up and sending (so subscribed)
            assert Observer.wait(lambda c=c: any(t in ("up/v1/devices/me/telemetry", "up/ds/seq")
                                                 for t, _ in list(c.obs.msgs)), 30), board.console()
        for n in (1, 2):
            tb.send(f"v1/devices/me/rpc/request/{40 + n}", {"method": "note", "params": {"n": n}})
            board.wait_for_line(f"NOTED {n}")
        assert Observer.wait(lambda: sum(1 for t, _ in list(bl.obs.msgs) if t == "up/event/noted") >= 2, 30), \
            board.console()
        assert Observer.wait(lambda: sum(1 for t, p in list(tb.obs.msgs)
                                         if t == "up/v1/devices/me/attributes" and b"note" in p) >= 2, 30), \
            board.console()
        assert [p for t, p in list(bl.obs.msgs) if t == "up/event/noted"][:2] == [b"note 1", b"note 2"]
        assert not any(t.startswith("up/v1/") for t, _ in list(bl.obs.msgs))
        assert not any("event" in t for t, _ in list(tb.obs.msgs))
        assert "reading dropped" not in board.console() and "readings dropped" not in board.console()
        assert "not for" not in board.console()
        assert tb.proxy.violations == [] and bl.proxy.violations == []
    finally:
        board.stop()


def test_biotz_firmware_notice_reaches_user_code_beside_thingsboard_ota(tmp_path, clouds):
    """Biotz's firmware/update is user.py's to act on (Biotz has no OTA the device runs): with
    ThingsBoard as the main cloud, which watches for its own OTA, the notice still reaches
    handle() named after Biotz, and ThingsBoard's updater is never loaded for it."""
    tb = clouds("tb", ThingsBoard({TB_TOKEN: "device"}))
    bz = clouds("bz", Biotz("cust-9", {"dev-5": "bz-passw0rd"}))
    notice = {"name": "fw-2.0", "download-url": "https://fw.example/2.0.bin", "size": 1024, "sha256": "0" * 64}
    # retained before the device connects, as Biotz keeps it
    bz.obs.c.publish("down/biotz/1/0/cust-9/dev-5/subscribe/firmware/update", json.dumps(notice), 1,
                     retain=True).wait_for_publish(5)
    cfg = two_cloud_config(tb.proxy.url(), bz.proxy.url())
    cfg["platforms"][1] = {"kind": "biotz", "url": bz.proxy.url(), "device_id": "dev-5",
                           "customer_id": "cust-9", "password": "bz-passw0rd"}
    board = HostBoard(tmp_path / "board", cfg, user_py=USER, heapsize=TWO_CLOUD_HEAP).start()
    try:
        line = board.wait_for_line("HANDLED biotz firmware", timeout=60)
        assert line.strip() == "HANDLED biotz firmware", board.console()
        assert "ota" not in [ln.split()[2] for ln in board.lines if ln.startswith("HANDLED ")]
        assert "updater" not in board.console() and "fw_state" not in board.console()
        assert tb.proxy.violations == [] and bz.proxy.violations == []
    finally:
        board.stop()
