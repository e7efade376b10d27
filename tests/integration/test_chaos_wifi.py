"""Chaos: Wi-Fi flapping while publishing. A MicroPython program composes the firmware's own
pieces: uplink.wifi.Wifi on the stand-in WLAN (tests/firmware/fake_network.py), and Outbox
-> Publisher -> MQTTClient against mosquitto. The stand-in's link drops at random moments;
the radio is tied to the TCP stream the way the air ties them on a board: while the link is
down no new connection can be opened (EHOSTUNREACH), and a connection that was open when
the link dropped is dead: what it writes is lost and nothing more arrives on it, so the
client has to notice by its keepalive. No reading may be lost.
"""

import pytest

from tests.integration import mpy
from tests.ledger import Ledger, Observer, show
from tests.services import mosquitto_bin

pytestmark = pytest.mark.skipif(mosquitto_bin() is None, reason="mosquitto not installed")

N = 500
DROPS = 12

SCRIPT = """
import asyncio, json, os, random
import fake_network
fake_network.install()
import network
from uplink import transport
from uplink.mqtt import MQTTClient
from uplink.outbox import Outbox
from uplink.publisher import Publisher
from uplink.wifi import Wifi

N = %(n)d
DROPS = %(drops)d
random.seed(8)
fake_network.reset()
fake_network.add_ap("home", "pw", rssi=-60)
wlan = network.WLAN(network.STA_IF)


class Board:
    def wlan(self):
        return wlan


class Air:
    # a TCP stream that dies with the Wi-Fi link it was opened on
    never = asyncio.Event()

    def __init__(self, s):
        self.s = s
        self.dead = False
        self.link = wlan._t0  # when the link it was opened on came up (the stand-in's clock)

    def __getattr__(self, name):
        return getattr(self.s, name)

    def _alive(self):
        # a drop the driver repaired by itself is still a new link: this connection is gone
        if self.dead or not wlan.isconnected() or wlan._t0 != self.link:
            self.dead = True
        return not self.dead

    async def readexactly(self, n):
        if self._alive():
            data = await self.s.readexactly(n)
            if self._alive():
                return data
        await Air.never.wait()  # nothing more arrives on a dead link

    async def fill(self):
        if self._alive():
            await self.s.fill()
            if self._alive():
                return
        await Air.never.wait()

    def take(self, n):
        return self.s.take(n) if self._alive() else None

    def write(self, buf):
        if self._alive():
            return self.s.write(buf)

    def push(self):
        if self._alive():
            self.s.push()

    async def drain(self):
        if self._alive():
            await self.s.drain()


_open = transport.open_stream
opened = [0]


async def open_stream(url, **kw):
    if not wlan.isconnected():
        raise OSError(113, "EHOSTUNREACH: Wi-Fi is down")
    opened[0] += 1
    return Air(await _open(url, **kw))


transport.open_stream = open_stream


class Adapter:
    async def ready(self, client):  # (platforms.Base.ready: no session rules here)
        return None

    def encode(self, readings):
        return [("chaos/telemetry", json.dumps([r["values"] for r in readings]).encode(), len(readings))]


async def flapper(wifi):
    for _ in range(DROPS):
        await asyncio.sleep_ms(600 + random.getrandbits(10))  # 0.6..1.6 s of link
        while not wlan.isconnected():
            await asyncio.sleep_ms(20)
        fake_network.drop()
    print("FLAPPED", DROPS)


async def produce(ob, pub):
    for i in range(1, N + 1):
        ob.put(json.dumps({"ts": None, "values": {"seq": i}}).encode())
        pub.notify()
        await asyncio.sleep_ms(25)


async def main():
    Wifi.BACKOFF_MIN_MS = 200  # the firmware's backoff, scaled down for a test
    Wifi.BACKOFF_MAX_MS = 1000
    Wifi.POLL_MS = 100
    wifi = Wifi(Board(), [{"ssid": "home", "password": "pw"}], timeout_s=5)
    await wifi.connect()
    asyncio.create_task(wifi.run())
    ob = Outbox(os.getenv("DIR"), 1 << 20)
    c = MQTTClient(os.getenv("URL"), "chaos-wifi", keepalive=2)
    ev = {}

    def status(e, detail):
        ev[e] = ev.get(e, 0) + 1

    c.on_status = status
    MQTTClient.backoff_max_ms = 2000
    pub = Publisher(ob, Adapter(), c, batch=10)
    c.on_ack = pub.on_ack
    await c.connect(retry=True)
    asyncio.create_task(pub.run())
    asyncio.create_task(produce(ob, pub))
    await flapper(wifi)
    for _ in range(600):
        if pub.acked >= N and not ob.depth:
            break
        await asyncio.sleep_ms(100)
    print("DONE acked=%%d depth=%%d wifi_drops=%%d tcp_opens=%%d mqtt_lost=%%d connect_errors=%%d"
          %% (pub.acked, ob.depth, wifi.drops, opened[0], ev.get("disconnected", 0), ev.get("error", 0)))
    await c.disconnect()


asyncio.run(main())
"""


def test_wifi_flapping_while_publishing_none_lost(tmp_path, broker, capsys):
    obs = Observer(broker.ports["mqtt"], ["chaos/telemetry"], client_id="obs-wifi")
    p = mpy.start(SCRIPT % {"n": N, "drops": DROPS}, compiled=True, heapsize="96k",
                  env={"URL": broker.url(), "DIR": str(tmp_path / "outbox")})
    try:
        done = p.expect("DONE", timeout=120)
        assert p.wait(20) == 0, p.output
        obs.quiet(0.5)
        led = Ledger.of([(0, v["seq"]) for v in obs.readings()], sent={(0, i) for i in range(1, N + 1)})
        stats = dict(kv.split("=") for kv in done.split()[1:])
        led.extra = {**stats, "ooo": led.out_of_order}
        show(capsys, led.table(f"Wi-Fi flapping x{DROPS}"))
        assert led.lost == 0, f"lost readings: {led.missing}\n{p.output}"
        assert f"acked={N} depth=0" in done, p.output
        # the driver repairs some drops by itself before Wifi.run() looks (as on an ESP32)
        assert int(stats["wifi_drops"]) >= DROPS // 3, p.output
        # a drop kills the MQTT connection (drops while it is already dead add nothing)
        assert int(stats["mqtt_lost"]) >= DROPS // 3, p.output
    finally:
        p.kill()
        obs.close()
