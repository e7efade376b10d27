# Crash-loop guard. Every boot counts itself in a small file; a boot that stays up long enough
# clears the count. Three boots in a row that did not get that far stop the app, so a broken
# release or config cannot keep a board rebooting forever, and the REPL stays reachable.
import json

PATH = "boots.json"
LIMIT = 3
HEALTHY_AFTER_S = 60


class SafeMode(Exception):
    pass


def _read():
    try:
        with open(PATH) as f:
            n = json.load(f).get("failed", 0)
            return n if isinstance(n, int) else 0
    except (OSError, ValueError, AttributeError):
        return 0


def _write(n, reason=None):
    tmp = PATH + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"failed": n, "reason": reason}, f)
    import os

    os.rename(tmp, PATH)


def enter_boot():
    """Call first thing at boot; raises SafeMode after LIMIT unhealthy boots in a row."""
    n = _read()
    if n >= LIMIT:
        _write(0)  # the next (manual) reset tries again: the user fixed something
        raise SafeMode("%d boots in a row failed within %d s of starting" % (n, HEALTHY_AFTER_S))
    _write(n + 1)


def healthy():
    """The app has run long enough: this boot does not count as a failure."""
    _write(0)


def failed_boots():
    return _read()
