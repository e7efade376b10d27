"""How long blocking calls stall the firmware's asyncio loop, on the ESP32 model.

A 10 ms ticker task runs beside each operation; the number is its worst lateness (the
longest the loop did not run it beyond its 10 ms sleep), i.e. how long everything else on
the board (MQTT keepalive, the outbox, the watchdog feeder) waited. Operations:

- dns:   socket.getaddrinfo("localhost", ...) as transport.open_tcp and clock do it. On the
         model that is glibc reading /etc/hosts; on the ESP32 it is lwIP's resolver, with
         the GIL released but the calling (only) task blocked for a network round trip, up
         to lwIP's retry timeouts when the resolver does not answer.
- mqtt / mqtts connect: MQTTClient.connect() (DNS, TCP, TLS for mqtts, CONNECT/CONNACK) to
         the local mosquitto. The TLS handshake runs in the loop's reads and writes; its
         crypto steps are the stall. The model is an x86 core: an ESP32 at 240 MHz is
         slower by one to two orders of magnitude on the same mbedTLS code.
- wifi join: Wifi.connect() on tests/firmware/fake_network.py with the scan modelled from
         the port (network_wlan_scan: blocking esp_wifi_scan_start, IDF default 120 ms per
         channel, 13 channels = fake_network.SCAN_MS_ESP32). These gaps are MODELLED, not
         measured on a chip: one network (no scan) against two (one scan).

    make bench BENCH_ARGS="blocking"      .venv/bin/python -m tests.bench blocking
    options: --n=20 (repetitions of each operation; the worst gap over all is printed)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tests.integration import mpy
from tests.services import Mosquitto

SCRIPT = """
import asyncio, os, socket, time
import fake_network
fake_network.install()
from uplink.mqtt import MQTTClient
from uplink.wifi import Wifi

N = int(os.getenv("N"))
worst = [0]


async def ticker():
    last = time.ticks_us()
    while True:
        await asyncio.sleep_ms(10)
        now = time.ticks_us()
        late = time.ticks_diff(now, last) - 10000
        if late > worst[0]:
            worst[0] = late
        last = now


async def measure(name, op, n=N):
    gaps, took = [], []
    for i in range(n):
        await asyncio.sleep_ms(25)  # the ticker is in its rhythm again
        worst[0] = 0
        t0 = time.ticks_us()
        await op(i)
        took.append(time.ticks_diff(time.ticks_us(), t0))
        await asyncio.sleep_ms(15)  # the ticker's wake-up after the op is counted
        gaps.append(worst[0])
    gaps.sort()
    took.sort()
    print("RESULT", name, gaps[len(gaps) // 2], gaps[-1], took[len(took) // 2])


async def dns(i):
    socket.getaddrinfo("localhost", 1883, 0, socket.SOCK_STREAM)


def mqtt(url, ca):
    async def op(i):
        c = MQTTClient(url, "bench-block-%d" % i, ca=ca)
        await c.connect()
        await c.disconnect()
    return op


class Board:
    def wlan(self):
        return fake_network.WLAN(fake_network.STA_IF)


def join(networks):
    async def op(i):
        fake_network.reset()  # SCAN_MS back to the modelled ESP32 value
        fake_network.add_ap("home", "pw", -60)
        fake_network.add_ap("shop", "pw", -50)
        w = Wifi(Board(), networks, 5)
        w.JOIN_POLL_MS = 5
        await w.connect()
        assert w.connected
    return op


async def main():
    asyncio.create_task(ticker())
    ca = os.getenv("CA")
    await measure("dns", dns)
    await measure("mqtt-connect", mqtt(os.getenv("URL_MQTT"), None))
    await measure("mqtts-connect", mqtt(os.getenv("URL_MQTTS"), ca))
    home = {"ssid": "home", "password": "pw"}
    shop = {"ssid": "shop", "password": "pw"}
    # each scan really sleeps its modelled 1.5 s: three runs are enough
    await measure("wifi-join-1-network", join([home]), min(N, 3))
    await measure("wifi-join-2-networks", join([home, shop]), min(N, 3))
    print("DONE")


asyncio.run(main())
"""

WHAT = {
    "dns": "getaddrinfo('localhost') (model: /etc/hosts)",
    "mqtt-connect": "MQTT connect, TCP",
    "mqtts-connect": "MQTT connect, TLS handshake",
    "wifi-join-1-network": "Wi-Fi join, 1 network: no scan (modelled)",
    "wifi-join-2-networks": "Wi-Fi join, 2 networks: scan (modelled)",
}


def _opt(argv: list[str], name: str, default: str) -> str:
    for a in argv:
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return default


def main(argv: list[str]) -> None:
    n = int(_opt(argv, "n", "20"))
    broker = Mosquitto(Path(tempfile.mkdtemp(prefix="uplink-bench-broker-"))).start()
    try:
        env = {"N": str(n), "CA": str(broker.pki.ca_der),
               "URL_MQTT": broker.url("mqtt"), "URL_MQTTS": broker.url("mqtts")}
        p = mpy.start(SCRIPT, env=env, compiled=True)
        try:
            p.expect("DONE", timeout=300)
        finally:
            p.kill()
        print(f"asyncio loop stalls on the ESP32 model, 10 ms ticker, {n} runs each "
              f"(Wi-Fi: 3), firmware as .mpy")
        print(f"{'operation':48} {'median stall':>13} {'worst stall':>12} {'op median':>10}")
        for line in p.lines:
            if line.startswith("RESULT"):
                _, name, med, worst, took = line.split()
                print(f"{WHAT.get(name, name):48} {int(med) / 1000:>10.1f} ms {int(worst) / 1000:>9.1f} ms "
                      f"{int(took) / 1000:>7.1f} ms", flush=True)
    finally:
        broker.stop()


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
