"""MQTT client throughput and memory, the firmware compiled to .mpy, against a local mosquitto.

Prints, for mqtt:// (TCP), mqtts:// (TLS) and wss://: QoS 1 messages/s for 5,000 messages of
100 bytes sent one `await publish()` after another, and the same 5,000 with `wait=False` and
one `flush()`; the smallest `-X heapsize` at which a TLS connect + 1,000 QoS 1 publishes
completes (and over wss:// with 1 KB messages, the publisher's size); the .mpy size of the transport and MQTT modules.

    make bench BENCH_ARGS="mqtt"          .venv/bin/python -m tests.bench mqtt
    options: --n=5000  --window=N  --schemes=mqtt,mqtts,wss
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tests.bench.bench_firmware import interpreter
from tests.integration import mpy
from tests.services import Mosquitto

SCRIPT = """
import asyncio, gc, os, sys, time
from uplink.mqtt import MQTTClient

URL, CA, N, MODE, WINDOW = (os.getenv("URL"), os.getenv("CA"), int(os.getenv("N")), os.getenv("MODE"),
                            os.getenv("WINDOW"))
PAYLOAD = b"x" * 100

async def main():
    kw = {"window": int(WINDOW)} if WINDOW else {}
    c = MQTTClient(URL, "bench-" + MODE, ca=CA, **kw)
    await c.connect()
    for _ in range(20):  # warm up: the first publishes pay for allocations and JIT-free caches
        await c.publish("bench/" + MODE, PAYLOAD, qos=1)
    gc.collect()
    t0 = time.ticks_us()
    if MODE == "one":
        for _ in range(N):
            await c.publish("bench/one", PAYLOAD, qos=1)
    else:
        for _ in range(N):
            await c.publish("bench/drain", PAYLOAD, qos=1, wait=False)
        await c.flush()
    dt = time.ticks_diff(time.ticks_us(), t0)
    print("RESULT", N, dt)
    await c.disconnect()

asyncio.run(main())
"""

HEAP = """
import asyncio, gc, os
from uplink.mqtt import MQTTClient

async def main():
    w = os.getenv("WINDOW")
    c = MQTTClient(os.getenv("URL"), "heap", ca=os.getenv("CA"), **({"window": int(w)} if w else {}))
    await c.connect()
    wait = os.getenv("MODE") == "one"
    msg = b"x" * int(os.getenv("SIZE") or 100)
    for i in range(1000):
        await c.publish("bench/heap", msg, qos=1, wait=wait)
    await c.flush()
    await c.disconnect()
    print("HEAP-OK", gc.mem_free())

asyncio.run(main())
"""

ALLOC = """
import asyncio, gc, os
from uplink.mqtt import MQTTClient

async def main():
    c = MQTTClient(os.getenv("URL"), "alloc", ca=os.getenv("CA"), window=8)
    await c.connect()
    msg = b"x" * 1000
    for _ in range(20):
        await c.publish("bench/alloc", msg, qos=1, wait=False)
    await c.flush()
    gc.collect()
    gc.disable()  # with no collection in between, mem_alloc's growth is what was allocated
    a0 = gc.mem_alloc()
    for _ in range(200):
        await c.publish("bench/alloc", msg, qos=1, wait=False)
    await c.flush()
    print("ALLOC", (gc.mem_alloc() - a0) // 200)
    gc.enable()
    await c.disconnect()

asyncio.run(main())
"""


def _opt(argv: list[str], name: str, default: str) -> str:
    for a in argv:
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return default


def _run(script: str, env: dict, heapsize: str | None = None, timeout: float = 120) -> str:
    p = mpy.start(script, env=env, compiled=True, heapsize=heapsize)
    try:
        p.wait(timeout)
    finally:
        p.kill()
    return p.output


def main(argv: list[str]) -> None:
    n = int(_opt(argv, "n", "5000"))
    window = _opt(argv, "window", "")
    schemes = _opt(argv, "schemes", "mqtt,mqtts,wss").split(",")
    broker = Mosquitto(Path(tempfile.mkdtemp(prefix="uplink-bench-broker-"))).start()
    try:
        base = {"CA": str(broker.pki.ca_der), "N": str(n), "WINDOW": window}
        print(f"QoS 1, {n} x 100 B, firmware as .mpy, default heap{', window ' + window if window else ''}")
        print(f"{'scheme':8} {'one-at-a-time':>15} {'wait=False+flush':>18}")
        for scheme in schemes:
            rates = []
            for mode in ("one", "drain"):
                out = _run(SCRIPT, {**base, "URL": broker.url(scheme), "MODE": mode})
                line = [x for x in out.splitlines() if x.startswith("RESULT")]
                if not line:
                    rates.append("failed")
                    print(out[-2000:])
                    continue
                _, cnt, us = line[0].split()
                rates.append(f"{int(cnt) * 1_000_000 // max(1, int(us)):,} msg/s")
            print(f"{scheme:8} {rates[0]:>15} {rates[1]:>18}", flush=True)

        heaps = [f"{k}k" for k in range(16, 97, 4)]
        probes = [
            (model, name, "mqtts", mode, 100, what)
            for model, name in ((True, "ESP32 model"), (False, "PyPI port"))
            for mode, what in (("one", "one at a time"), ("drain", "wait=False + flush, window full"))
        ]
        # the app's own shape over WebSocket: ~1 KB messages, window 8 (app.WINDOW)
        probes.append((True, "ESP32 model", "wss", "drain", 1000, "1 KB each, window 8, wait=False + flush"))
        for model, name, scheme, mode, size, what in probes:
            with interpreter(model):
                env = {**base, "URL": broker.url(scheme), "MODE": mode, "SIZE": str(size)}
                if size > 100:
                    env["WINDOW"] = "8"
                label = f"{'TLS' if scheme == 'mqtts' else 'WSS'} connect + 1,000 QoS 1 publishes ({what})"

                def ok(i: int, env: dict = env) -> bool:
                    return "HEAP-OK" in _run(HEAP, env, heapsize=heaps[i], timeout=60)

                lo, hi = 0, len(heaps) - 1  # bisection: a heap that works means bigger ones do
                if not ok(hi):
                    print(f"{name}: {label} fails even in {heaps[hi]}")
                    continue
                while lo < hi:
                    mid = (lo + hi) // 2
                    lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
                print(f"{name}: smallest -X heapsize, {label}: {heaps[hi]}", flush=True)

        with interpreter(True):
            for scheme in ("mqtts", "wss"):
                out = _run(ALLOC, {**base, "URL": broker.url(scheme)}, heapsize="4m")
                got = [x.split()[1] for x in out.splitlines() if x.startswith("ALLOC")]
                print(f"ESP32 model: heap allocated per 1 KB QoS 1 message over {scheme} (window 8): "
                      f"{int(got[0]):,} B" if got else f"allocation probe over {scheme} failed", flush=True)

        fw = mpy.compiled_firmware() / "uplink"
        sizes = {m: (fw / f"{m}.mpy").stat().st_size for m in ("transport", "mqtt", "ws")}
        print(
            f".mpy size: transport {sizes['transport']:,} B + mqtt {sizes['mqtt']:,} B = "
            f"{sizes['transport'] + sizes['mqtt']:,} B (ws, loaded only for ws:// wss://: {sizes['ws']:,} B)"
        )
    finally:
        broker.stop()


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
