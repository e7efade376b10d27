"""The whole firmware (.mpy) on the host board: the smallest -X heapsize it runs in, per
transport, found by bisection on the ESP32 model (32-bit, 16-byte GC blocks, like the chip)
and on the 64-bit PyPI port (8-byte pointers, 32-byte blocks: more heap for the same code);
the free GC heap it reports while running; and what each module costs in heap on the model.

"Runs" = boots, connects and delivers 20 telemetry messages within 15 s.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from host_tools import hostboard
from tests.integration import mpy
from tests.integration.hostboard import HostBoard
from tests.services import Mosquitto

HEAPS = [f"{k}k" for k in range(40, 256 + 1, 8)]
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
        values = item.get("values", {})
        free = values.get("gc_free")
        if free is not None:
            break
    return len(got) >= WANT, free


@contextlib.contextmanager
def interpreter(model: bool):
    """Every micropython the harness starts is the ESP32 model, or the PyPI port."""
    real = hostboard.micropython
    hostboard.micropython = lambda model_=True: real(model=model and model_)  # type: ignore[assignment]
    try:
        yield real(model=model)
    finally:
        hostboard.micropython = real  # type: ignore[assignment]


def smallest(broker: Mosquitto, scheme: str) -> tuple[str | None, int | None]:
    # bisection: a heap that runs means every bigger one does
    lo, hi, free = 0, len(HEAPS) - 1, None
    ok, f = run_at(broker, scheme, HEAPS[hi])
    if not ok:
        return None, None
    free = f
    while lo < hi:
        mid = (lo + hi) // 2
        ok, f = run_at(broker, scheme, HEAPS[mid])
        if ok:
            hi, free = mid, f
        else:
            lo = mid + 1
    return HEAPS[hi], free


MODULES = """
import gc, sys
gc.collect()
base = gc.mem_free()
prev = base
for name in sys.argv[1:]:
    __import__(name)
    gc.collect()
    now = gc.mem_free()
    print("MOD", name, prev - now)
    prev = now
print("MOD total", base - prev)
"""

# in the order the app imports them over mqtts (ThingsBoard); uplink.cloud only there when
# user.py imports it; then the OTA modules, each loaded only while an update or a trial runs
# (uplink.ota.start): ota and ota_thingsboard, ota_blynk on Blynk; ota_trial for a trial or an
# outcome owed, before any download; ota_stage for a download; ota_guard for one check at a
# time; ota_fetch and https for the boot's download
ORDER = ["uplink", "uplink.log", "uplink.config", "uplink.board", "uplink.board_host", "uplink.clock",
         "uplink.runner", "uplink.context", "uplink.telemetry", "uplink.app", "uplink.platforms",
         "uplink.platforms.thingsboard", "uplink.outbox",
         "uplink.publisher", "uplink.transport", "uplink.mqtt", "uplink.ws", "asyncio", "ssl", "uplink.cloud",
         "uplink.ota", "uplink.ota_thingsboard", "uplink.ota_blynk", "uplink.ota_trial", "uplink.ota_stage",
         "uplink.ota_guard",
         "uplink.https",
         "uplink.ota_fetch"]


def module_heap(name: str = "ESP32 model") -> None:
    p = mpy.start(MODULES, compiled=True, heapsize="256k", args=tuple(ORDER))
    try:
        p.wait(60)
    except (AssertionError, subprocess.TimeoutExpired):
        pass
    rows = [ln.split()[1:] for ln in p.output.splitlines() if ln.startswith("MOD ")]
    print(f"heap taken by importing each module (.mpy, {name}, after gc.collect; ws only for ws/wss,"
          " config and board_host not kept on an ESP32, cloud only for a user.py that uses it,"
          " the ota modules only while an update or a trial runs):")
    print("  " + ", ".join(f"{n.replace('uplink.', '')} {int(b) / 1024:.1f}k" for n, b in rows), flush=True)


def main(argv: list[str]) -> None:
    broker = Mosquitto().start()
    try:
        for model, name in ((True, "ESP32 model"), (False, "PyPI port (64-bit)")):
            with interpreter(model) as exe:
                print(f"{name}: {exe}", flush=True)
                for scheme in ("mqtt", "mqtts", "wss"):
                    heap, free = smallest(broker, scheme)
                    if heap is None:
                        print(f"  {scheme:6} did not run in {HEAPS[-1]}", flush=True)
                    else:
                        print(f"  {scheme:6} smallest heap that runs: {heap} "
                              f"(free GC heap while running: {free} bytes)",
                              flush=True)
        for model, name in ((True, "ESP32 model"), (False, "PyPI port")):
            with interpreter(model):
                module_heap(name)
    finally:
        broker.stop()


if __name__ == "__main__":
    main([])
