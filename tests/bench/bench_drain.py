"""Backlog drain through the whole firmware path, on the ESP32 model at the firmware's heap.

10,000 readings (the app's own shape: health values plus a few sensor values, stored as the
app stores them) are queued in the Outbox while the client is offline; then the client
connects and the Publisher drains them through the ThingsBoard adapter and the MQTTClient
to a local mosquitto over mqtts. Printed: readings/s from the connect until the outbox is
empty, MemoryErrors the publisher met (each one is a "paused: MemoryError" line), the
heap's low-water mark during the drain, and beside it the client's raw wait=False rate (one
100-byte message per reading) and the outbox's own read+ack rate on the same heap. Last, a
broker that drops the device after every CONNACK for a minute: connections per minute, the
heap before and after, and readings delivered. Between them, a drain through the ThingsBoard
broker profile enforcing ThingsBoard Cloud's rate limits: readings/s, data points/s and the
violations (target 0).

    make bench BENCH_ARGS=drain          .venv/bin/python -m tests.bench drain
    options: --n=10000  --heap=96k  --schemes=mqtts  --batch=20  --window=N (the client's)
             --flap_n=2000 --flap_s=60 (the "broker drops after CONNACK" run)
             --tb_n=1000 (the run under ThingsBoard Cloud's rate limits: the hourly 14,000 data
             points make 10,000 readings of 10 keys a seven-hour drain)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tests.bench.bench_mqtt import _opt, _run
from tests.services import Mosquitto

# Both drain scripts' backlog: N readings in an outbox in DIR (the scripts read their env first)
BACKLOG = """
def reading(i):
    if os.getenv("SMALL"):  # three sensor values and no health keys
        return {"ts": 1767225600000 + i * 1000, "values": {"t": 21.5 + (i & 15) / 10, "h": 40.2, "seq": i}}
    # what Telemetry.take_reading stores: health values, then the user's, an epoch-ms ts
    return {"ts": 1767225600000 + i * 1000, "values": {
        "uptime_s": 3600 + i, "heap_free": 41234 - (i & 1023), "outbox_depth": N - i,
        "dropped": 0, "rssi": -61 - (i & 7), "chip_temp": 41.5,
        "t": 21.5 + (i & 15) / 10, "h": 40.2, "p": 1013.2, "seq": i}}


def fill():
    ob = Outbox(DIR, 4 << 20)
    for i in range(N):
        ob.put(json.dumps(reading(i)).encode())
    return ob
"""

SCRIPT = """
import asyncio, gc, json, os, time
from uplink.outbox import Outbox

N, MODE, BATCH = int(os.getenv("N")), os.getenv("MODE"), int(os.getenv("BATCH"))
URL, CA, DIR, WINDOW = os.getenv("URL"), os.getenv("CA"), os.getenv("DIR"), os.getenv("WINDOW")
""" + BACKLOG + """


async def drain():
    from uplink.mqtt import MQTTClient
    from uplink.platforms.thingsboard import Adapter
    from uplink.publisher import Publisher

    ob = fill()
    ad = Adapter({"platform": {"token": "bench", "url": URL, "client_rpc": False}, "device": {"name": "bench"}}, None)
    c = MQTTClient(URL, "bench-drain", ca=CA, **({"window": int(WINDOW)} if WINDOW else {}))
    pub = Publisher(ob, ad, c, batch=BATCH)
    c.on_ack = pub.on_ack
    asyncio.create_task(pub.run())
    gc.collect()
    low = gc.mem_free()
    t0 = time.ticks_us()
    await c.connect()
    pub.notify()
    k = 0
    while ob.depth:
        await asyncio.sleep_ms(2)
        k += 1
        if k % 50 == 0:  # about every 100 ms: what is live, not garbage not yet collected
            gc.collect()
            low = min(low, gc.mem_free())
    dt = time.ticks_diff(time.ticks_us(), t0)
    print("RESULT", N, dt, low, pub.acked)
    await c.disconnect()


async def raw():
    from uplink.mqtt import MQTTClient

    c = MQTTClient(URL, "bench-raw", ca=CA)
    await c.connect()
    payload = b"x" * 100
    gc.collect()
    t0 = time.ticks_us()
    for _ in range(N):
        await c.publish("bench/raw", payload, qos=1, wait=False)
    await c.flush()
    print("RESULT", N, time.ticks_diff(time.ticks_us(), t0), gc.mem_free(), N)
    await c.disconnect()


def outbox():
    ob = fill()
    gc.collect()
    t0 = time.ticks_us()
    after = 0
    while True:
        got = ob.read(after, BATCH)
        if not got:
            break
        for rid, _ in got:
            ob.ack(rid)
        after = got[-1][0]
    print("RESULT", N, time.ticks_diff(time.ticks_us(), t0), gc.mem_free(), N)


async def flaps():
    # a broker that drops every connection 5 ms after CONNACK for FLAP_S (tests/firmware/
    # cutter.py in front of mosquitto), then lets the device be: how often it reconnects, what
    # the heap looks like after, and whether every reading still arrives
    from cutter import Cutter
    from uplink.mqtt import MQTTClient
    from uplink.platforms.thingsboard import Adapter
    from uplink.publisher import Publisher
    host, port = URL.split("//")[1].split(":")
    ob = fill()
    cut = await Cutter(host, int(port)).start()
    cut.after_connack_ms = 5
    ad = Adapter({"platform": {"token": "bench", "url": cut.url, "client_rpc": False}, "device": {"name": "bench"}},
                 None)
    c = MQTTClient(cut.url, "bench-flaps", window=8)
    p = Publisher(ob, ad, c, batch=BATCH)
    gc.collect()
    before = gc.mem_free()
    t = asyncio.create_task(p.run())
    asyncio.create_task(c.connect(retry=True))
    await asyncio.sleep(int(os.getenv("FLAP_S")))
    conns = cut.connections
    cut.after_connack_ms = None
    while ob.depth:
        await asyncio.sleep_ms(100)
    t.cancel()
    await c.disconnect()
    cut.close()
    await asyncio.sleep_ms(100)
    gc.collect()
    print("FLAPS", conns, before, gc.mem_free(), p.acked, N)


if MODE == "drain":
    asyncio.run(drain())
elif MODE == "flaps":
    asyncio.run(flaps())
elif MODE == "raw":
    asyncio.run(raw())
else:
    outbox()
"""


# The drain under rate limits, a script of its own: its code would otherwise take heap from
# the unlimited drain's runs (the script's bytecode lives in the same 96 KB)
LIMITED_SCRIPT = """
import asyncio, gc, json, os, time
from uplink.outbox import Outbox

N, BATCH, URL, DIR = int(os.getenv("N")), int(os.getenv("BATCH")), os.getenv("URL"), os.getenv("DIR")
""" + BACKLOG + """


async def limited():
    # the adapter as the app runs it on ThingsBoard: on_connect asks getSessionLimits, whose
    # rateLimits pace every publish (uplink.platforms.tb_limits)
    from platform_fakes import Ctx
    from uplink.mqtt import MQTTClient
    from uplink.platforms.thingsboard import Adapter
    from uplink.publisher import Publisher

    ob = fill()
    token = os.getenv("TOKEN")
    ad = Adapter({"platform": {"token": token, "url": URL}, "device": {"name": "bench"}}, Ctx())
    c = MQTTClient(URL, "bench-tb", user=token)
    for t, q in ad.subscriptions():
        await c.subscribe(t, q)
    c.on_message = lambda t, p, r: ad.handle(t, p, r)
    c.on_connect = lambda: ad.on_connect(c)
    pub = Publisher(ob, ad, c, batch=BATCH)
    asyncio.create_task(pub.run())
    gc.collect()
    low = gc.mem_free()
    t0 = time.ticks_us()
    await c.connect()
    k = 0
    while ob.depth:
        await asyncio.sleep_ms(20)
        k += 1
        if k % 5 == 0:
            gc.collect()
            low = min(low, gc.mem_free())
    dt = time.ticks_diff(time.ticks_us(), t0)
    print("RESULT", N, dt, low, pub.acked)
    print("PACED", ad.limits.waited if ad.limits else -1, c.connections)
    await c.disconnect()


asyncio.run(limited())
"""


def _result(out: str) -> tuple[int, int, int, int] | None:
    line = [x for x in out.splitlines() if x.startswith("RESULT")]
    if not line:
        return None
    n, us, low, acked = (int(x) for x in line[0].split()[1:])
    return n, us, low, acked


def flaps(broker, heap: str, batch: str, n: str, seconds: int) -> None:
    env = {"N": n, "MODE": "flaps", "BATCH": batch, "URL": broker.url("mqtt"), "CA": "", "WINDOW": "",
           "FLAP_S": str(seconds), "DIR": tempfile.mkdtemp(prefix="uplink-bench-outbox-")}
    out = _run(SCRIPT, env, heapsize=heap, timeout=seconds + 300)
    line = [x for x in out.splitlines() if x.startswith("FLAPS")]
    if not line:
        print(f"broker drops after CONNACK: failed\n{out[-2000:]}")
        return
    conns, before, after, acked, total = (int(x) for x in line[0].split()[1:])
    print(f"broker drops after CONNACK for {seconds} s, then not: {conns * 60 // seconds} connections/min "
          f"(backoff-bounded), heap {before:,} B free before, {after:,} B after; "
          f"readings delivered {acked:,} of {total:,}", flush=True)


# ThingsBoard Cloud's per-device limits as getSessionLimits reports them (issue 25: messages
# and data points "200:1,6000:60", data points also 14000 an hour)
CLOUD_LIMITS = {"messages": "200:1,6000:60", "telemetryMessages": "200:1,6000:60",
                "telemetryDataPoints": "200:1,6000:60,14000:3600"}


def limited(broker, heap: str, batch: str, n: str) -> None:
    from tests.integration.broker_profiles import ProfileProxy, ThingsBoard

    prof = ThingsBoard({"bench-token": "device"}, rate_limits=CLOUD_LIMITS)
    proxy = ProfileProxy(prof, broker.ports["mqtt"]).start()
    try:
        env = {"N": n, "BATCH": batch, "URL": proxy.url(), "TOKEN": "bench-token", "CA": "",
               "WINDOW": "", "DIR": tempfile.mkdtemp(prefix="uplink-bench-outbox-")}
        out = _run(LIMITED_SCRIPT, env, heapsize=heap, timeout=3600)
    finally:
        proxy.stop()
    res = _result(out)
    paced = [x.split() for x in out.splitlines() if x.startswith("PACED")]
    if res is None or not paced:
        print(f"ThingsBoard-limited drain: failed\n{out[-2000:]}")
        return
    cnt, us, low, acked = res
    s = us / 1e6
    print(f"mqtt   drain under ThingsBoard Cloud's limits {CLOUD_LIMITS}: {cnt:,} readings "
          f"in {s:.0f} s: {cnt / s:>6,.1f} readings/s, {prof.data_points / s:,.0f} data points/s; "
          f"violations {len(proxy.violations)}, connections {paced[0][2]}, MemoryErrors {out.count('MemoryError')}, "
          f"acked {acked:,}", flush=True)


def main(argv: list[str]) -> None:
    n = int(_opt(argv, "n", "10000"))
    heap = _opt(argv, "heap", "96k")
    batch = _opt(argv, "batch", "20")
    schemes = _opt(argv, "schemes", "mqtts").split(",")
    window = _opt(argv, "window", "")
    broker = Mosquitto(Path(tempfile.mkdtemp(prefix="uplink-bench-broker-"))).start()
    try:
        print(f"{n} readings queued offline, then drained; firmware as .mpy, -X heapsize={heap}, batch {batch}"
              f"{', client window ' + window if window else ''}")
        for scheme in schemes:
            rows = []
            for mode in ("drain", "raw", "outbox"):
                env = {"N": str(n), "MODE": mode, "BATCH": batch, "URL": broker.url(scheme),
                       "CA": str(broker.pki.ca_der), "WINDOW": window,
                       "DIR": tempfile.mkdtemp(prefix="uplink-bench-outbox-")}
                out = _run(SCRIPT, env, heapsize=heap, timeout=300)
                res = _result(out)
                mem_errors = out.count("MemoryError")
                if res is None:
                    print(f"{scheme} {mode}: failed\n{out[-2000:]}")
                    rows.append(None)
                    continue
                cnt, us, low, acked = res
                rows.append((cnt * 1_000_000 // max(1, us), low, mem_errors, acked))
            d, r, o = rows
            if d:
                print(f"{scheme:6} drain (Outbox+Publisher+ThingsBoard+MQTTClient): {d[0]:>6,} readings/s"
                      f"  MemoryErrors {d[2]}  heap low-water {d[1]:,} B free  acked {d[3]:,}")
            if r:
                print(f"{scheme:6} client alone, wait=False + flush (100 B each):   {r[0]:>6,} msg/s")
            if o:
                print(f"{'':6} outbox alone, read+ack (batch {batch}):             {o[0]:>6,} records/s", flush=True)
        limited(broker, heap, batch, _opt(argv, "tb_n", "1000"))
        flaps(broker, heap, batch, _opt(argv, "flap_n", "2000"), int(_opt(argv, "flap_s", "60")))
    finally:
        broker.stop()


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
