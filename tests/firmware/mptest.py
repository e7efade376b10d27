# Runs inside MicroPython: executes one test module's test_* functions and reports each
# between markers the pytest plugin (tests/mpy_plugin.py) reads back.
import gc
import io
import os
import random
import sys

MARK = "\x1e@@"


def heapsize(size):
    # Read by the pytest plugin from the source; a no-op here.
    def deco(fn):
        return fn

    return deco


def slow(fn):
    # A long scenario, out of `make test-fast` (the plugin marks it pytest's `slow`); a no-op here.
    return fn


def env(name, default=None):
    v = os.getenv(name)
    return default if v is None else v


# Every random input of a test comes from `random`, seeded per test from TEST_SEED (or a fresh
# seed, printed when the test fails), so any failing case can be replayed exactly.
SEED = int(env("TEST_SEED") or int.from_bytes(os.urandom(3), "big"))


def randbytes(n):
    """n bytes from the seeded generator (in place of os.urandom in tests)."""
    return bytes(random.getrandbits(8) for _ in range(n))


class SeededOS:
    """Stands in for `os` in a firmware module under test (`ws.os = SeededOS()`), so the
    bytes it draws from urandom (a WebSocket key, a mask) follow the test's seed."""

    urandom = staticmethod(randbytes)


class raises:
    """with raises(ValueError) as r: ...  (r.value is the exception)"""

    def __init__(self, exc, match=None):
        self.exc = exc
        self.match = match
        self.value = None

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if et is None:
            raise AssertionError("did not raise " + self.exc.__name__)
        if not issubclass(et, self.exc):
            return False
        self.value = ev
        if self.match is not None and self.match not in str(ev):
            raise AssertionError("%r does not contain %r" % (str(ev), self.match))
        return True


def _run_one(fn):
    r = fn()
    if r is not None and hasattr(r, "send"):
        import asyncio

        asyncio.run(r)
        asyncio.new_event_loop()


def main(modname, names):
    mod = __import__(modname)
    for name in names:
        print(MARK + "START " + name)
        random.seed(SEED)
        gc.collect()
        try:
            _run_one(getattr(mod, name))
        except BaseException as e:  # report everything, including SystemExit and MemoryError
            buf = io.StringIO()
            sys.print_exception(e, buf)
            print(MARK + "FAIL " + name)
            print(buf.getvalue())
            print("replay: TEST_SEED=%d" % SEED)
            if isinstance(e, MemoryError):  # exhausted, or fragmented? the largest free block says
                import micropython

                gc.collect()
                micropython.mem_info()
            print(MARK + "END " + name)
            if isinstance(e, KeyboardInterrupt):
                raise
            continue
        print(MARK + "PASS " + name)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
