"""The whole firmware (.mpy) on the host board: the smallest -X heapsize it runs in, per
transport, and the free heap it reports while running.

"Runs" = boots, connects and delivers 20 telemetry messages within 15 s. The host board is
the 64-bit unix port: its GC blocks are 32 bytes and its pointers 8, against 16 and 4 on the
ESP32, so the same firmware needs more heap here than on the chip.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from tests.integration.hostboard import HostBoard
from tests.services import Mosquitto

HEAPS = ["64k", "72k", "80k", "88k", "96k", "104k", "112k", "128k", "144k", "160k", "192k", "256k"]
WANT = 20


def _config(broker: Mosquitto, scheme: str) -> dict:
    return {
        "device": {"name": "bench", "board": "host"},
        "ntp": {"servers": []},
        "platform": {"kind": "thingsboard", "url": broker.url(scheme), "token": "t",
                     **({"ca": "ca.der"} if scheme in ("mqtts", "wss") else {})},
        "telemetry": {"interval_ms": 100},
    }


def run_at(broker: Mosquitto, scheme: str, heap: str) -> tuple[bool, int | None]:
    got: list[bytes] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_connect = lambda c, *a: c.subscribe("v1/devices/me/telemetry")
    sub.on_message = lambda c, u, m: got.append(m.payload)
    sub.connect("localhost", broker.ports["mqtt"])
    sub.loop_start()
    board = HostBoard(Path(tempfile.mkdtemp(prefix="uplink-bench-")), _config(broker, scheme),
                      heapsize=heap, files={"ca.der": broker.pki.ca_der.read_bytes()}).start()
    end = time.monotonic() + 15
    while time.monotonic() < end and len(got) < WANT and board.proc.poll() is None:
        time.sleep(0.1)
    board.stop()
    sub.loop_stop()
    sub.disconnect()
    free = None
    for p in reversed(got):
        data = json.loads(p)
        item = data[-1] if isinstance(data, list) else data
        free = item.get("values", {}).get("heap_free")
        if free is not None:
            break
    return len(got) >= WANT, free


def main(argv: list[str]) -> None:
    broker = Mosquitto().start()
    try:
        for scheme in ("mqtt", "mqtts", "wss"):
            smallest = None
            for heap in HEAPS:
                ok, free = run_at(broker, scheme, heap)
                if ok:
                    smallest = heap
                    print(f"{scheme:6} smallest heap that runs: {heap} (free heap while running: {free} bytes)", flush=True)
                    break
            if smallest is None:
                print(f"{scheme:6} did not run in any of {HEAPS}", flush=True)
    finally:
        broker.stop()


if __name__ == "__main__":
    main([])
