# Crash-loop guard. Only crash exits count: an exception that escaped the app (runner.run records
# it before resetting), a watchdog reset (the app hung) and a panic (a HARD reset without the
# mark the firmware's own resets leave, board.RESET_MARK). Power-on and brownout resets, a
# Ctrl-C or a cloud that cannot be reached are not crashes. LIMIT crash exits in a row, with no
# healthy run (HEALTHY_AFTER_S of the app running) between them, stop the app: safe mode.
# Safe mode does not park the board for good: it waits retry_s() (device.safe_mode_retry_s),
# then resets and gives the app one more try; the reason stays in safemode.txt until a healthy
# run has reported it.
import json

PATH = "crashes.json"  # not boots.json: that is uplink/boots.py's boot registry
REASON = "safemode.txt"
LIMIT = 3
HEALTHY_AFTER_S = 60
RETRY_S = 1200  # default wait in safe mode before the next try (20 minutes)
RETRY_MIN_S = 1


class SafeMode(Exception):
    pass


def _read():
    try:
        with open(PATH) as f:
            d = json.load(f)
        n = d.get("crashes", 0)
        return (n if isinstance(n, int) else 0), d.get("last")
    except (OSError, ValueError, AttributeError):
        return 0, None


def _write(n, last):
    import os

    tmp = PATH + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"crashes": n, "last": last}, f)
    os.rename(tmp, PATH)


def enter_boot(cause):
    """Call first thing at boot with board.reset_cause(); raises SafeMode after LIMIT crash
    exits in a row. OSError when the count cannot be stored (a full filesystem)."""
    n, last = _read()
    why = None
    if cause == "watchdog":  # the watchdog is armed only by the app: it hung
        why = "watchdog reset (the app stopped feeding it)"
    if not _planned() and cause == "hard":  # (the mark goes at every boot: it counts once)
        why = ("HARD reset the firmware did not make: a panic (Guru Meditation, IDF abort) "
               "or machine.reset() from user code")
    if why is not None:
        n += 1
        last = why
        _write(n, last)
    if n >= LIMIT:
        _write(LIMIT - 1, last)  # after the wait: one more try, not LIMIT more
        raise SafeMode("%d crash exits in a row; the last: %s" % (n, last))


def _planned():
    """Whether the last reset was the firmware's own (board.RESET_MARK); the mark is taken."""
    import os

    from uplink.board import RESET_MARK

    try:
        os.remove(RESET_MARK)
        return True
    except OSError:
        return False


def crashed(reason):
    """Count a crash exit before the reset. False when it cannot be stored."""
    try:
        _write(_read()[0] + 1, reason[:200])
        return True
    except OSError:
        return False


def healthy():
    """The app has run HEALTHY_AFTER_S: the crash count starts again. Writes only if needed
    (flash wear) and removes safemode.txt, which this run has read and reports."""
    if _read()[0]:
        _write(0, None)
    try:
        import os

        os.remove(REASON)
    except OSError:
        pass


def crashes():
    return _read()[0]


def note(reason):
    """Keep the reason for safe mode where the next healthy run finds it."""
    try:
        with open(REASON, "w") as f:
            f.write(reason[:200] + "\n")
    except OSError:
        pass  # a full filesystem must not stop safe mode from waiting and retrying


def last_reason():
    try:
        with open(REASON) as f:
            return f.read(200).strip() or None
    except OSError:
        return None


def retry_s():
    """config.json's device.safe_mode_retry_s, read without the config checker: safe mode is
    also where a config the checker refused ends up."""
    try:
        with open("config.json") as f:
            v = json.load(f)["device"]["safe_mode_retry_s"]
        if isinstance(v, int) and not isinstance(v, bool) and v >= RETRY_MIN_S:
            return v
    except Exception:  # no config, not JSON, no such key: the default
        pass
    return RETRY_S
