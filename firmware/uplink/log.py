# One place for the firmware's console lines, so their shape is the same everywhere and a
# host-side tool (uplink logs, the demo) can read them. Never pass a secret in here.
import time

_start = time.ticks_ms()
quiet = False


def _emit(level, tag, msg):
    if quiet and level == "I":
        return
    s = time.ticks_diff(time.ticks_ms(), _start) // 1000
    print("%6d %s %s: %s" % (s, level, tag, msg))


def info(tag, msg):
    _emit("I", tag, msg)


def warn(tag, msg):
    _emit("W", tag, msg)


def error(tag, msg):
    _emit("E", tag, msg)


def exc(tag, msg, e):
    _emit("E", tag, "%s: %s: %s" % (msg, type(e).__name__, e))
