"""What a second cloud costs in heap (config `platforms`, firmware/uplink/sessions.py): the
whole firmware (.mpy) on the host board on the ESP32 model at 128k, ThingsBoard alone, then
ThingsBoard + Blynk, over plain MQTT and over TLS (mqtts: a TLS session's buffers are not in
gc_free, as on the chip; with -X heapsize they are in libc, the IDF heap's figures are
`make bench BENCH_ARGS=firmware`'s chip mode); TLS again at 112k, to show the margin below
the 128k budget. gc_free is what the firmware's health reports (after gc.collect) in each
reading, taken once every session is up: min and median over the readings.

    make bench BENCH_ARGS=twocloud        .venv/bin/python -m tests.bench twocloud
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from tests.integration.hostboard import HostBoard
from tests.services import Mosquitto

HEAPS = ("128k", "112k")
READINGS = 12


def _config(broker: Mosquitto, scheme: str, two: bool) -> dict:
    ca = {"ca": "ca.der"} if scheme == "mqtts" else {}
    tb = {"kind": "thingsboard", "url": broker.url(scheme), "token": "t", **ca}
    bl = {"kind": "blynk", "url": broker.url(scheme), "token": "b", "template_id": "TMPL", "template_name": "B",
          "client_id": "bench-blynk", **ca}
    return {
        "device": {"name": "bench", "board": "host"},
        "ntp": {"servers": []},
        **({"platforms": [tb, bl]} if two else {"platform": tb}),
        "telemetry": {"interval_ms": 250, "health": True},
    }


def run(broker: Mosquitto, scheme: str, two: bool, heap: str) -> tuple[bool, list[int]]:
    frees: list[int] = []
    blynk: list[bytes] = []

    def on_message(c, u, m):
        if m.topic == "v1/devices/me/telemetry":
            data = json.loads(m.payload)
            for item in data if isinstance(data, list) else [data]:
                v = item.get("values", item)
                # counted once both are up (the second session's TLS handshake done)
                if "gc_free" in v and (not two or blynk):
                    frees.append(v["gc_free"])
        else:
            blynk.append(m.payload)

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_connect = lambda c, *a: c.subscribe([("v1/devices/me/telemetry", 0), ("ds/#", 0)])
    sub.on_message = on_message
    sub.connect("localhost", broker.ports["mqtt"])
    sub.loop_start()
    board = HostBoard(Path(tempfile.mkdtemp(prefix="uplink-bench-")), _config(broker, scheme, two),
                      heapsize=heap, files={"ca.der": broker.pki.ca_der.read_bytes()}).start()
    end = time.monotonic() + 40
    while time.monotonic() < end and len(frees) < READINGS and board.proc.poll() is None:
        time.sleep(0.1)
    ok = len(frees) >= READINGS and board.proc.poll() is None
    board.stop()
    frees.append(-board.console().count("MemoryError"))  # (the last item: pauses, negated)
    sub.loop_stop()
    sub.disconnect()
    if not ok:
        print(board.console()[-3000:])
    return ok, frees


def main(argv: list[str]) -> None:
    broker = Mosquitto().start()
    try:
        for heap, scheme in [(h, sc) for h in HEAPS for sc in ("mqtt", "mqtts")]:
            if scheme == "mqtt" and heap != HEAPS[0]:
                continue
            print(f"gc_free on the ESP32 model at {heap} (min / median over {READINGS} readings), bytes:")
            got = {}
            for two in (False, True):
                ok, frees = run(broker, scheme, two, heap)
                pauses = -frees.pop()
                label = "ThingsBoard + Blynk" if two else "ThingsBoard alone  "
                if not ok:
                    print(f"  {scheme:5} {label}: did not run ({len(frees)} readings)")
                    continue
                got[two] = (min(frees), int(statistics.median(frees)))
                print(f"  {scheme:5} {label}: {got[two][0]:6} / {got[two][1]:6}   MemoryError pauses: {pauses}",
                      flush=True)
            if len(got) == 2:
                print(f"  {scheme:5} the second session costs {got[False][1] - got[True][1]} bytes (median)")
    finally:
        broker.stop()
