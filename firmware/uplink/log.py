# One place for the firmware's console lines, so their shape is the same everywhere and a
# host-side tool (uplink logs, the demo) can read them. Never pass a secret in here.
#
# Also the board's uptime. ticks_ms wraps at 2**30 ms on the ESP32 (small ints are 31-bit)
# and ticks_diff is right only within 2**29 ms (~6.2 days), so a plain ticks_diff from boot
# goes negative after a week. uptime_s() adds up short ticks_diff steps instead; it stays
# right as long as something calls it at least every 6 days (App.supervise does every 5 s,
# and every log line does too). Seconds and leftover milliseconds are kept apart so the
# totals stay small ints (no heap allocation) for 34 years.
import time

_last = time.ticks_ms()
_up_s = 0
_up_ms = 0
quiet = False


def uptime_s():
    """Whole seconds since boot, correct across any number of tick wraps."""
    global _last, _up_s, _up_ms
    now = time.ticks_ms()
    _up_ms += time.ticks_diff(now, _last)
    _last = now
    if _up_ms >= 1000:
        _up_s += _up_ms // 1000
        _up_ms %= 1000
    return _up_s


def uptime_ms():
    """Milliseconds since boot (a long int after 12 days: use uptime_s() where seconds do)."""
    s = uptime_s()
    return s * 1000 + _up_ms


def _emit(level, tag, msg):
    if quiet and level == "I":
        return
    print("%6d %s %s: %s" % (uptime_s(), level, tag, msg))


def info(tag, msg):
    _emit("I", tag, msg)


def warn(tag, msg):
    _emit("W", tag, msg)


def error(tag, msg):
    _emit("E", tag, msg)


def exc(tag, msg, e):
    _emit("E", tag, "%s: %s: %s" % (msg, type(e).__name__, e))
