"""`make bench`: runs every tests/bench/bench_*.py module's main(args) and prints its numbers.

`make bench BENCH_ARGS="mqtt"` runs only the modules whose name contains "mqtt". A module
with `OPT_IN = True` (a slow one) runs only when named.
"""

import importlib
import pkgutil
import sys
import time

import tests.bench as pkg


def main(argv: list[str]) -> int:
    names = sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name.startswith("bench_"))
    wanted = [a for a in argv if not a.startswith("-")]
    failed = 0
    for name in names:
        if wanted and not any(w in name for w in wanted):
            continue
        t0 = time.monotonic()
        try:
            mod = importlib.import_module(f"tests.bench.{name}")
            if getattr(mod, "OPT_IN", False) and not wanted:
                continue
            print(f"\n=== {name} ===", flush=True)
            mod.main(argv)
        except Exception as e:  # one broken bench must not hide the others' numbers
            failed += 1
            print(f"{name} FAILED: {type(e).__name__}: {e}", flush=True)
        print(f"({name}: {time.monotonic() - t0:.1f}s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
