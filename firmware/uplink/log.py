# One place for the firmware's console lines, so their shape is the same everywhere and a
# host-side tool (uplink logs, the demo) can read them. Never pass a secret in here.
#
# Also the board's uptime. ticks_ms wraps at 2**30 ms on the ESP32 (small ints are 31-bit)
# and ticks_diff is right only within 2**29 ms (~6.2 days), so a plain ticks_diff from boot
# goes negative after a week. uptime_s() adds up short ticks_diff steps instead; it stays
# right as long as something calls it at least every 6 days (App.supervise does every 5 s,
# and every log line does too). Seconds and leftover milliseconds are kept apart so the
# totals stay small ints (no heap allocation) for 34 years.
import io
import json
import time

_last = time.ticks_ms()
_up_s = 0
_up_ms = 0
# The least line printed, config device.console: 0 "data" (also a line per message sent and
# per command, level D as ESPHome's "Sending state"), 1 "info", 2 "warn" (warnings, errors).
# On a busy board the D lines cost serial time: "info" keeps the state changes only.
level = 0
LEVELS = ("data", "info", "warn")
HEAD = 60  # bytes of a payload a D line shows


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


def _emit(lv, tag, msg):
    print("%6d %s %s: %s" % (uptime_s(), lv, tag, msg))


def info(tag, msg):
    if level < 2:
        _emit("I", tag, msg)


def warn(tag, msg):
    _emit("W", tag, msg)


def error(tag, msg):
    _emit("E", tag, msg)


def exc(tag, msg, e):
    _emit("E", tag, "%s: %s: %s" % (msg, type(e).__name__, e))


_seen = {}  # errors of user.py's code -> times so far (uplink.where.report)


def user_exc(tag, msg, e):
    """A failure in user.py's code: where it happened the first time, then counted. The code
    is uplink.where's, loaded for the moment: errors are rare, the heap is not."""
    try:
        from uplink import transient

        with transient():
            from uplink import where

            where.report(tag, msg, e)
    except MemoryError:
        exc(tag, msg, e)


def pub(topic, payload, n):
    """A D line per MQTT message of readings: `pub: TOPIC 3 readings 212 B [{"ts":...`
    (n = 0: one part of a reading split over several messages)."""
    if level:
        return
    try:
        what = "part of a reading" if not n else "1 reading" if n == 1 else "%d readings" % n
        size = len(payload)  # one format for the whole line: each string on the way is garbage
        print("%6d D pub: %s %s %d B %s" % (uptime_s(), topic, what, size, _text(payload, size, size)))
    except MemoryError:  # a console line must never stop the work it reports
        pass


def read(values, device=None):
    """A D line per reading taken, the user's read() values only (health is in the pub:
    line): `read: temperature=20.3 led=false` (a gateway's sub-device: `read: pump-2: flow=3`),
    at most HEAD bytes of them."""
    if level:
        return
    try:
        h = _buf()
        size = 0
        try:
            if device is not None:
                h.write(str(device).encode())
                h.write(b":")
            for k in values:
                if h.n:
                    h.write(b" ")
                h.write(k.encode())  # a key's bytes: small, and gone with the line
                h.write(b"=")
                json.dump(values[k], h, separators=(",", ":"))  # pyright: ignore[reportCallIssue]
            size = h.n
        except _Full:
            size = h.n + 1
        print("%6d D read: %s" % (uptime_s(), _text(h.buf, h.n, size) if h.n else "(no values)"))
    except MemoryError:  # a console line must never stop the work it reports
        pass


def cmd(name, params, result):
    """A D line per command handled: `cmd: setLed {"on":true} -> {"led":true}`."""
    if level:
        return
    try:
        p = _json(params)
        if result is None:
            print("%6d D cmd: %s %s" % (uptime_s(), name[:HEAD], p))
        else:
            print("%6d D cmd: %s %s -> %s" % (uptime_s(), name[:HEAD], p, _json(result)))
    except MemoryError:  # a console line must never stop the work it reports
        pass


class _Full(Exception):
    pass


class _Head(io.IOBase):
    # json.dump writes a value here piece by piece; one byte past HEAD it stops the walk, so
    # a 4 KB downlink never becomes a 4 KB string on the heap for a console line
    def __init__(self):
        self.buf = bytearray(HEAD + 1)
        self.n = 0

    def write(self, b):  # b: a bytearray on the C stack (py/modio.c iobase_read_write)
        # copied byte by byte: a slice or memoryview per write (dozens per line) would be
        # garbage, a range() loop is not
        buf, n = self.buf, self.n
        k = min(len(b), HEAD + 1 - n)
        for i in range(k):
            buf[n + i] = b[i]
        self.n = n + k
        if k < len(b):
            raise _Full
        return k


_head = None


def _buf():
    global _head
    if _head is None:
        _head = _Head()
    _head.n = 0
    return _head


def _json(obj):
    h = _buf()
    size = 0
    try:
        # keyword only in extmod/modjson.c (mod_json_dump_helper); the stub has it positional
        json.dump(obj, h, separators=(",", ":"))  # pyright: ignore[reportCallIssue]
        size = h.n
    except _Full:
        size = h.n + 1  # more than was kept: the text ends with "..."
    except Exception:  # TypeError: not JSON (a user's handler may return anything)
        return "(%s)" % type(obj).__name__
    return _text(h.buf, h.n, size)


def _text(b, n, size):
    """The first n bytes of b (of size in all) as text, at most HEAD of them, cut before a
    character that would not fit and ended with "..." when cut."""
    k = min(n, HEAD)
    if isinstance(b, str):  # an adapter's payload is bytes; a str is shown all the same
        return b[:k] + "..." if size > k else b
    while 0 < k < n and b[k] & 0xC0 == 0x80:  # a UTF-8 continuation byte: mid-character
        k -= 1
    try:
        s = str(b[:k], "utf-8")
    except UnicodeError:
        return "(binary)"
    return s + "..." if size > k else s
