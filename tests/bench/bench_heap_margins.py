"""How much heap each firmware test group really needs, against the budget it runs under.

A test that passes at 96k only because its allocations happen to fall well is a test that
fails on the next machine (a longer checkout path shifts every string the interpreter keeps).
For every `[mpy]` group (one test file at one heap size) this finds the smallest heap, in 4k
steps, at which the whole group passes twice in a row on the interpreter that runs compiled
firmware (the ESP32 model when installed), and prints the margin to its budget. Groups under
MIN_MARGIN are flagged and make the bench fail.

Slow (every group is run a dozen times): only `make bench BENCH_ARGS=heap_margins` runs it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tests import mpy_plugin as plugin

OPT_IN = True
MIN_MARGIN = 1.25  # budget / smallest passing heap
STEP_K = 4


def _passes(path: Path, names: list, fw: Path, kb: int, extra: dict) -> bool:
    for _ in range(2):  # fragmentation varies a little from run to run
        out, err, rc, note = plugin.run_mptest(path, names, fw=fw, heap=f"{kb}k", extra=extra)
        res = plugin._split(out, err, rc, note)
        if any(res.get(n, ("MISSING",))[0] != "PASS" for n in names):
            return False
    return True


def smallest_heap(path: Path, names: list, fw: Path, budget_k: int, extra: dict) -> int | None:
    """Smallest passing heap in STEP_K steps up to the budget, or None if the budget fails."""
    if not _passes(path, names, fw, budget_k, extra):
        return None
    lo, hi = 8, budget_k  # lo fails (nothing runs in 8k), hi passes
    while hi - lo > STEP_K:
        mid = (lo + hi) // 2 // STEP_K * STEP_K or STEP_K
        if mid <= lo:
            break
        if _passes(path, names, fw, mid, extra):
            hi = mid
        else:
            lo = mid
    return hi


def main(argv: list[str]) -> None:
    from host_tools import hostboard
    from tests import services

    wanted = [a for a in argv if a.startswith("test_")]
    fw = plugin.compile_firmware(Path(tempfile.mkdtemp(prefix="uplink-mpy-")))
    print(f"interpreter: {hostboard.micropython()}, 96k runs as {plugin.port_heap('96k')} "
          f"(margin wanted: x{MIN_MARGIN})")
    print(f"{'test file':38} {'budget':>7} {'needs':>7} {'margin':>7}")
    thin = []
    try:
        for path in sorted(plugin.FW_TESTS.glob("test_*.py")):
            if wanted and path.stem not in wanted:
                continue
            needs, tests = plugin._parse(path)
            extra: dict = {}
            for need in needs:
                extra.update(services.get(need).env())
            # budgets in the ESP32's terms: run_mptest scales them when the model is absent
            for heap in sorted({t[1] for t in tests}, key=plugin.heap_kb):
                names = [t[0] for t in tests if t[1] == heap]
                budget = plugin.heap_kb(heap)
                need_k = smallest_heap(path, names, fw, budget, extra)
                if need_k is None:
                    print(f"{path.stem:38} {heap:>7} {'FAILS':>7}")
                    thin.append(path.stem)
                    continue
                margin = budget / need_k
                flag = "" if margin >= MIN_MARGIN else "  <- thin"
                print(f"{path.stem:38} {heap:>7} {need_k:>6}k {margin:>6.2f}x{flag}", flush=True)
                if flag:
                    thin.append(f"{path.stem} at {heap}")
    finally:
        for svc in services._SERVICES.values():
            svc.stop()
        services._SERVICES.clear()
    if thin:
        raise RuntimeError("heap margin below x%.2f: %s" % (MIN_MARGIN, ", ".join(thin)))
