"""Chaos: the heap runs short while a backlog drains.

Found by test_chaos_kills on the host board at a 128 KB heap: after a broker outage the
ThingsBoard adapter's encode() of a 20-reading batch raised MemoryError (1 KB on a
fragmented heap), the exception killed the publisher task ("Task exception wasn't
retrieved"), and the app went on measuring into an outbox nothing drained any more: every
later reading would have been dropped once the outbox filled. Here the fault is made
deterministic: an adapter that cannot encode more than 5 readings at a time (MemoryError)
and an outbox read that fails once (as outbox.read did at a 128 KB heap), with the real
Outbox, Publisher and MQTTClient. Nothing may be lost and the
publisher must keep going.
"""

import pytest

from tests.integration import mpy
from tests.ledger import Ledger, Observer, show
from tests.services import mosquitto_bin

pytestmark = pytest.mark.skipif(mosquitto_bin() is None, reason="mosquitto not installed")

SCRIPT = """
import asyncio, json, os
from uplink.mqtt import MQTTClient
from uplink.outbox import Outbox
from uplink.publisher import Publisher

N = 300
fails = [0]


class TightHeapAdapter:
    max_payload = 4096

    async def ready(self, client):  # (platforms.Base.ready: no session rules here)
        return None

    def encode(self, readings):
        if len(readings) > 5:
            fails[0] += 1
            raise MemoryError("memory allocation failed, allocating 1020 bytes")
        return [("chaos/telemetry", json.dumps([r["values"] for r in readings]).encode(), len(readings))]


async def main():
    ob = Outbox(os.getenv("DIR"), 1 << 20)
    for i in range(1, N + 1):  # a backlog, as after an outage
        ob.put(json.dumps({"ts": None, "values": {"seq": i}}).encode())
    _read, reads = ob.read, [0]

    def read(after, n):  # the outbox's read runs out of heap once, too
        reads[0] += 1
        if reads[0] == 2:
            raise MemoryError("memory allocation failed, allocating 144 bytes")
        return _read(after, n)

    ob.read = read
    c = MQTTClient(os.getenv("URL"), "chaos-heap", keepalive=10)
    pub = Publisher(ob, TightHeapAdapter(), c, batch=20)
    c.on_ack = pub.on_ack
    await c.connect(retry=True)
    asyncio.create_task(pub.run())
    for _ in range(600):
        if pub.acked >= N and not ob.depth:
            break
        await asyncio.sleep_ms(100)
    print("DONE acked=%d depth=%d encode_failures=%d" % (pub.acked, ob.depth, fails[0]))
    await c.disconnect()


asyncio.run(main())
"""


def test_publisher_survives_memory_error_while_encoding_a_backlog(tmp_path, broker, capsys):
    obs = Observer(broker.ports["mqtt"], ["chaos/telemetry"], client_id="obs-heap")
    p = mpy.start(SCRIPT, compiled=True, heapsize="96k",
                  env={"URL": broker.url(), "DIR": str(tmp_path / "outbox")})
    try:
        done = p.expect("DONE", timeout=90)
        assert p.wait(20) == 0, p.output
        obs.quiet(0.5)
        led = Ledger.of([(0, v["seq"]) for v in obs.readings()], sent={(0, i) for i in range(1, 301)})
        led.extra = dict(kv.split("=") for kv in done.split()[1:])
        show(capsys, led.table("MemoryError in encode"))
        assert led.lost == 0, f"lost readings: {led.missing}\n{p.output}"
        assert "acked=300 depth=0" in done, p.output
    finally:
        p.kill()
        obs.close()


CLOCK_SCRIPT = """
import asyncio
from uplink import clock


class Board:
    def time_ms(self):
        return 0  # the RTC is not in the present: the clock must sync

    def set_rtc(self, s, ms=0):
        pass


calls = [0]


async def sync():
    calls[0] += 1
    if calls[0] == 1:
        raise MemoryError("memory allocation failed, allocating 248 bytes")
    raise clock.ClockError("no answer")


async def main():
    c = clock.Clock(Board(), ["127.0.0.1:9"], resync_s=60)
    c.RETRY_MS = 20
    c.sync = sync
    t = asyncio.create_task(c.run())
    await asyncio.sleep_ms(500)
    print("SYNC_CALLS", calls[0], "alive", not t.done() if hasattr(t, "done") else True)


asyncio.run(main())
"""


def test_clock_task_survives_memory_error():
    """Seen at a 128 KB heap: a MemoryError inside the SNTP sync ended Clock.run, so the
    device never synced again. It must retry like after any failed sync."""
    p = mpy.start(CLOCK_SCRIPT, compiled=True, heapsize="96k")
    line = p.expect("SYNC_CALLS", timeout=30)
    assert p.wait(10) == 0, p.output
    assert int(line.split()[1]) >= 2, p.output


BAD_READING_USER = """
_n = [0]
def read():
    _n[0] += 1
    if _n[0] == 5:
        return {"seq": 5, "t": float("nan")}  # a failed sensor read
    if _n[0] == 7:
        return {"seq": 7, "t": float("inf"), "obj": object()}
    return {"seq": _n[0], "t": 21.5}
"""


def test_reading_with_nan_or_an_object_is_delivered_without_that_value(tmp_path, broker, capsys):
    """MicroPython's json.dumps writes NaN, inf and objects as they print ('nan',
    '<object>'): the stored record was not JSON and the publisher dropped the whole reading
    (health values included) as corrupt. The reading must arrive without the bad value."""
    from tests.integration.hostboard import HostBoard
    from tests.integration.test_chaos_cuts import app_config

    obs = Observer(broker.ports["mqtt"], ["v1/devices/me/telemetry"], client_id="obs-bad-reading")
    board = HostBoard(tmp_path / "board", app_config(broker.ports["mqtt"], interval_ms=50),
                      user_py=BAD_READING_USER).start()
    try:
        ok = obs.wait(lambda: len({k for k in obs.keys() if k[1] <= 20}) >= 20, 20)
        board.stop()
        led = Ledger.of([k for k in obs.keys() if k[1] <= 20], sent={(0, n) for n in range(1, 21)})
        led.extra = {"bad_values": "nan at 5, inf+object at 7"}
        show(capsys, led.table("reading with NaN/objects"))
        assert ok and led.lost == 0, f"lost: {led.missing}\n{board.console()}"
        by_seq = {v["seq"]: v for v in obs.readings()}
        assert "t" not in by_seq[5] and "t" not in by_seq[7] and by_seq[6]["t"] == 21.5
        assert "is not JSON: left out" in board.console()
    finally:
        board.stop()
        obs.close()


GATEWAY_USER = """
_n = [0]
def read():
    _n[0] += 1
    return {"seq": _n[0]}
def read_devices():
    return {"A": {"seq": _n[0], "t": float("nan") if _n[0] == 3 else 20.0}}
"""


def test_sub_device_reading_with_nan_is_delivered_without_it(tmp_path, broker):
    """The same for gateway sub-device readings (ThingsBoard gateway mode)."""
    import json as _json

    from tests.integration.hostboard import HostBoard
    from tests.integration.test_chaos_cuts import app_config

    obs = Observer(broker.ports["mqtt"], ["v1/gateway/telemetry"], client_id="obs-gw")
    cfg = app_config(broker.ports["mqtt"], interval_ms=50)
    cfg["platform"]["gateway_devices"] = ["A"]
    board = HostBoard(tmp_path / "board", cfg, user_py=GATEWAY_USER).start()

    def sub_readings():
        out = {}
        with obs.lock:
            msgs = list(obs.msgs)
        for _, payload in msgs:
            for r in _json.loads(payload).get("A", []):
                v = r.get("values", r)
                out[v["seq"]] = v
        return out

    try:
        ok = obs.wait(lambda: len(set(sub_readings()) & set(range(1, 11))) == 10, 20)
        board.stop()
        got = sub_readings()
        assert ok, f"sub-device readings missing: {sorted(set(range(1, 11)) - set(got))}\n{board.console()}"
        assert "t" not in got[3] and got[4]["t"] == 20.0
    finally:
        board.stop()
        obs.close()
