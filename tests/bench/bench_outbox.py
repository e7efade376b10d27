"""Outbox throughput in the MicroPython unix port: put() and read+ack rates for 2,000 records
of ~100 B, on VfsPosix (the host board) and on VfsLfs2 over a RAM block device with 4 KiB
blocks like the ESP32's flash (littlefs's own work, without the flash's erase time), for the
firmware as source and compiled with mpy-cross. On littlefs it also counts block erases and
bytes programmed per record, each put written at once (readings >= 5 s apart, the app's
hold_ms) and held in RAM (readings closer together), and turns them into years of flash life.

    make bench BENCH_ARGS=outbox
"""

from __future__ import annotations

import subprocess
import tempfile
import textwrap
from pathlib import Path

from tests.mpy_plugin import FIRMWARE, compile_firmware, micropython_bin, micropython_env

N = 2000
SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from uplink.outbox import Outbox

    N = int(sys.argv[1])
    fs, where, hold = sys.argv[2], sys.argv[3], int(sys.argv[4])
    dev = None
    if fs == "lfs":
        from ramblockdev import RAMBlockDev
        dev = RAMBlockDev(4096, 160)
        dev.format()
        dev.mount("/ram")
        where = "/ram/outbox"
    ob = Outbox(where, 400000, hold_ms=hold)
    recs = [b"%06d " % i + b"t=21.5,h=40.2,p=1013.2,v=3.3,rssi=-61,heap=81234," + b"x" * 43 for i in range(16)]

    def w():
        return (dev.erases, dev.programmed) if dev else (0, 0)

    t0, w0 = time.ticks_us(), w()
    for i in range(N):
        ob.put(recs[i & 15])
    ob.flush()
    tp, wp = time.ticks_diff(time.ticks_us(), t0), w()
    ep, bp = wp[0] - w0[0], wp[1] - w0[1]

    t0, w0 = time.ticks_us(), w()
    after, n = 0, 0
    while True:
        got = ob.read(after, 20)
        if not got:
            break
        for rid, _ in got:
            ob.ack(rid)
        n += len(got)
        after = got[-1][0]
    ob.flush()
    ta, wa = time.ticks_diff(time.ticks_us(), t0), w()
    ea, ba = wa[0] - w0[0], wa[1] - w0[1]
    assert n == N and ob.depth == 0, (n, ob.depth)
    print("RESULT", tp, ta, ep, bp, ea, ba)
    """
)


# Flash life, stated assumptions: a 4 MB ESP32 MicroPython image leaves ~2 MB to littlefs,
# 4 KB blocks (512), ~100,000 erase cycles per block, littlefs spreading erases over all
# blocks (its allocator moves round the whole device; files and metadata take a few, ignored).
# The outbox's share of the 100 B readings' acks is counted too.
BLOCKS, CYCLES = 2 * 1024 * 1024 // 4096, 100_000
DEFAULT_INTERVAL_S = 30  # config telemetry.interval_s
HOLD_S = 5  # app.py: Outbox(hold_ms=5000)


def years(erases_per_reading: float, interval_s: float) -> float:
    return BLOCKS * CYCLES / (erases_per_reading / interval_s) / (365 * 86400)


def _run(fw: Path, fs: str, label: str, tmp: Path, hold: int = 0) -> tuple[float, float]:
    script = tmp / "bench_outbox_mp.py"
    script.write_text(SCRIPT)
    where = tempfile.mkdtemp(prefix="uplink-bench-", dir=tmp)
    res = subprocess.run(
        [micropython_bin(), "-X", "heapsize=4M", str(script), str(N), fs, where + "/outbox", str(hold)],
        env=micropython_env(fw),
        capture_output=True,
        text=True,
        timeout=600,
    )
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT")]
    if res.returncode or not line:
        raise RuntimeError(f"{label} {fs}: {res.stderr or res.stdout}")
    tp, ta, ep, bp, ea, ba = (int(x) for x in line[0].split()[1:])
    wear = (
        f"\n               flash per put: {ep / N:.2f} erases, {bp / N:.0f} B programmed;"
        f" per ack: {ea / N:.3f} erases, {ba / N:.0f} B" if fs == "lfs" else ""
    )
    print(
        f"{label:6} {fs:5}{' held' if hold else '     '}  put {N / tp * 1e6:8.0f}/s ({tp / N / 1000:6.3f} ms)"
        f"   read+ack {N / ta * 1e6:8.0f}/s ({ta / N / 1000:6.3f} ms){wear}",
        flush=True,
    )
    return ep / N, ea / N


def main(argv: list[str]) -> None:
    print(f"{N} records of ~100 B; read in batches of 20, each acked")
    with tempfile.TemporaryDirectory(prefix="uplink-bench-") as d:
        tmp = Path(d)
        mpy = compile_firmware(tmp / "mpy")
        for label, fw in (("source", FIRMWARE), ("mpy", mpy)):
            for fs in ("posix", "lfs") if label == "source" else ("posix",):
                _run(fw, fs, label, tmp)
        put1, ack = _run(mpy, "lfs", "mpy", tmp)
        putn, _ = _run(mpy, "lfs", "mpy", tmp, hold=3_600_000)  # every put held: batches only
    one, batched = put1 + ack, putn + ack
    print(f"\nflash wear, 4 MB board ({BLOCKS} x 4 KB littlefs blocks, {CYCLES:,} erases each, levelled):")
    print(f"  erases per reading: {one:.2f} written at once (readings >= {HOLD_S} s apart), "
          f"{batched:.3f} held in RAM and batched (closer together; at most {HOLD_S} s / 1 KB held)")
    print(f"  at the default interval ({DEFAULT_INTERVAL_S} s): {years(one, DEFAULT_INTERVAL_S):,.0f} years")
    for iv in (HOLD_S, 1, 0.1, 0.01):
        # below HOLD_S a write takes whatever came in HOLD_S, or 1 KB of readings, whichever is first
        per_s = one / iv if iv >= HOLD_S else max(one / HOLD_S, batched / iv)
        print(f"  a reading every {iv:g} s: {BLOCKS * CYCLES / per_s / (365 * 86400):,.1f} years")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
