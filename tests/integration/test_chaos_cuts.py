"""Chaos: QoS 1 readings through random connection cuts (the fault proxy between the device
and mosquitto), none lost.

- 10,000 readings through the firmware's publish path (Outbox -> Publisher -> MQTTClient,
  mpy-cross compiled, 96 KB heap) with 50 cuts, half of them in the middle of a chunk.
- the whole firmware on the host board (App, ThingsBoard profile) with cuts: 1,000 readings
  and 10 cuts in `make test`; CHAOS_LONG=1 makes it 10,000 readings and 50 cuts.

The observer is a paho subscriber straight to the broker. Each test prints its ledger.
"""

import os
import time

import pytest

from tests.faultproxy import FaultProxy
from tests.integration import mpy
from tests.integration.hostboard import HostBoard
from tests.ledger import SEQ_USER, Ledger, Observer, outbox_readings, show
from tests.services import Mosquitto, mosquitto_bin

pytestmark = pytest.mark.skipif(mosquitto_bin() is None, reason="mosquitto not installed")

LONG = bool(os.environ.get("CHAOS_LONG"))

PUBLISH_PATH = """
import asyncio, gc, json, os
from uplink.mqtt import MQTTClient
from uplink.outbox import Outbox
from uplink.publisher import Publisher

N = int(os.getenv("N"))
PAUSE = int(os.getenv("PAUSE_MS", "10"))
TOPIC = "chaos/telemetry"


class Adapter:
    # like a real platform: several readings per message (a JSON array), up to 5
    max_payload = 4096

    async def ready(self, client):  # (platforms.Base.ready: no session rules here)
        return None

    def encode(self, readings):
        out = []
        for i in range(0, len(readings), 5):
            part = readings[i : i + 5]
            out.append((TOPIC, json.dumps([r["values"] for r in part]).encode(), len(part)))
        return out


async def produce(ob, pub):
    for i in range(1, N + 1):
        ob.put(json.dumps({"ts": None, "values": {"seq": i}}).encode())
        pub.notify()
        if i % 20 == 0:
            await asyncio.sleep_ms(PAUSE)  # 10 ms: about 2,000 readings a second at most
    print("PRODUCED", N)


async def main():
    ob = Outbox(os.getenv("DIR"), 1 << 20)
    ca = None
    if os.getenv("CA"):
        with open(os.getenv("CA"), "rb") as f:
            ca = f.read()
    c = MQTTClient(os.getenv("URL"), "chaos-10k", keepalive=10, ca=ca)
    events = {}

    def status(ev, detail):
        events[ev] = events.get(ev, 0) + 1

    c.on_status = status
    pub = Publisher(ob, Adapter(), c, batch=20)
    c.on_ack = pub.on_ack
    await c.connect(retry=True)
    asyncio.create_task(pub.run())
    asyncio.create_task(produce(ob, pub))
    low = gc.mem_free()
    while pub.acked < N or ob.depth:
        await asyncio.sleep_ms(100)
        gc.collect()
        low = min(low, gc.mem_free())
    print("DONE sent=%d acked=%d depth=%d dropped=%d reconnects=%d heap_low=%d"
          % (pub.sent, pub.acked, ob.depth, ob.dropped, events.get("connected", 0) - 1, low))
    await c.disconnect()


asyncio.run(main())
"""


def inject(proxy: FaultProxy, obs: Observer, total: int, cuts: int, done) -> dict:
    """A random fault each time another total/(cuts+1) readings have arrived, until `cuts`
    connections were really cut."""
    kinds: dict = {}
    last = 0.0
    while not done():
        time.sleep(0.01)
        n = len(obs.readings()) if proxy.cuts < cuts else 0
        if proxy.cuts < cuts and n >= (proxy.cuts + 1) * total // (cuts + 1) and time.monotonic() - last > 0.15:
            k = proxy.random_fault()
            kinds[k] = kinds.get(k, 0) + 1
            last = time.monotonic()
    return kinds


def test_10k_qos1_readings_50_random_cuts_publish_path(tmp_path, capsys):
    n, cuts = 10_000, 50
    broker = Mosquitto(tmp_path / "broker").start()
    obs = Observer(broker.ports["mqtt"], ["chaos/telemetry"])
    proxy = FaultProxy(broker.ports["mqtt"], seed=10)
    p = mpy.start(PUBLISH_PATH, compiled=True, heapsize="96k",
                  # 1,000 readings/s: the drain keeps up with faster production, and then 10,000
                  # readings end before 50 cuts at least 0.15 s apart could happen
                  env={"N": str(n), "URL": f"mqtt://127.0.0.1:{proxy.port}", "DIR": str(tmp_path / "outbox"),
                       "PAUSE_MS": "20"})
    try:
        t0 = time.monotonic()
        kinds = inject(proxy, obs, n, cuts, lambda: any("DONE" in ln for ln in p.lines) or p.proc.poll() is not None)
        done = p.expect("DONE", timeout=120)
        assert p.wait(30) == 0, p.output
        obs.quiet(0.5)
        secs = time.monotonic() - t0
        led = Ledger.of([(0, v["seq"]) for v in obs.readings()], sent={(0, i) for i in range(1, n + 1)})
        led.extra = {"cuts": proxy.cuts, **kinds, "s": round(secs, 1), "ooo": led.out_of_order,
                     **dict(kv.split("=") for kv in done.split()[1:] if kv.split("=")[0] in ("reconnects", "heap_low"))}
        show(capsys, led.table("10k QoS1, 50 cuts (pub path)"))
        assert proxy.cuts >= cuts, "the proxy cut fewer connections than planned"
        assert led.lost == 0, f"lost readings: {led.missing}"
        assert "acked=%d depth=0 dropped=0" % n in done, done
    finally:
        p.kill()
        proxy.close()
        obs.close()
        broker.stop()


@pytest.mark.parametrize("scheme", ["mqtts", "ws", "wss"])
def test_cuts_mid_tls_record_and_websocket_frame(tmp_path, capsys, scheme):
    """The same publish path over TLS, WebSocket and both: a cut in the middle of a chunk is
    a cut in the middle of a TLS record or a WebSocket frame."""
    n, cuts = 1_000, 10
    broker = Mosquitto(tmp_path / "broker").start()
    obs = Observer(broker.ports["mqtt"], ["chaos/telemetry"])
    proxy = FaultProxy(broker.ports[scheme], seed=12)
    path = "/mqtt" if scheme.startswith("ws") else ""
    p = mpy.start(PUBLISH_PATH, compiled=True, heapsize="128k",
                  env={"N": str(n), "URL": f"{scheme}://localhost:{proxy.port}{path}", "DIR": str(tmp_path / "outbox"),
                       "CA": str(broker.pki.ca_der), "PAUSE_MS": "50"})
    try:
        kinds = inject(proxy, obs, n, cuts, lambda: any("DONE" in ln for ln in p.lines) or p.proc.poll() is not None)
        done = p.expect("DONE", timeout=120)
        assert p.wait(30) == 0, p.output
        obs.quiet(0.5)
        led = Ledger.of([(0, v["seq"]) for v in obs.readings()], sent={(0, i) for i in range(1, n + 1)})
        led.extra = {"cuts": proxy.cuts, **kinds, "ooo": led.out_of_order}
        show(capsys, led.table(f"{scheme}: {n} readings, {cuts} cuts"))
        assert proxy.cuts >= cuts
        assert led.lost == 0, f"lost readings: {led.missing}"
        assert "acked=%d depth=0 dropped=0" % n in done, done
    finally:
        p.kill()
        proxy.close()
        obs.close()
        broker.stop()


def app_config(port: int, **telemetry) -> dict:
    return {
        "device": {"name": "chaos", "board": "host"},
        "ntp": {"servers": []},
        # client_rpc off: a plain broker has nobody to answer getSessionLimits, and the first
        # reading would wait 2 s for it (a 4 KB outbox at 50 readings/s drops 70 meanwhile)
        "platform": {"kind": "thingsboard", "url": f"mqtt://127.0.0.1:{port}", "token": "chaos", "keepalive": 10,
                     "client_rpc": False},
        "telemetry": {"interval_s": 1, "health": False, **telemetry},
        "outbox": {"max_bytes": 1 << 20},
    }


def test_full_app_readings_survive_random_cuts(tmp_path, capsys):
    n, cuts = (10_000, 50) if LONG else (1_000, 10)
    broker = Mosquitto(tmp_path / "broker").start()
    obs = Observer(broker.ports["mqtt"], ["v1/devices/me/telemetry"])
    proxy = FaultProxy(broker.ports["mqtt"], seed=11)
    board = HostBoard(tmp_path / "board", app_config(proxy.port, interval_ms=10), user_py=SEQ_USER).start()
    try:
        t0 = time.monotonic()
        kinds = inject(proxy, obs, n, cuts, lambda: len(set(obs.keys())) >= n or board.proc.poll() is not None)
        assert obs.wait(lambda: len(set(obs.keys())) >= n, 60), board.console()
        secs = time.monotonic() - t0
        board.stop()
        obs.quiet(0.5)
        waiting, dropped = outbox_readings(board.state)
        led = Ledger.of(obs.keys(), waiting)
        led.extra = {"cuts": proxy.cuts, **kinds, "s": round(secs, 1), "ooo": led.out_of_order,
                     "reconnects": proxy.connections - 1}
        show(capsys, led.table(f"app: {n} readings, {cuts} cuts"))
        assert proxy.cuts >= cuts
        assert led.lost == 0, f"lost readings: {led.missing}"
        assert dropped == 0
        # first arrivals in the order measured: a reconnect resends the oldest first
        assert led.out_of_order == 0, "readings overtook older ones after a reconnect"
    finally:
        board.stop()
        proxy.close()
        obs.close()
        broker.stop()
