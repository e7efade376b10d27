# An error in user.py's code on the console: the first time with where it was raised, as
# "user.py:12 in read > sensor.py:3 in get" (the last frames of its traceback, read out of
# sys.print_exception line by line into one small buffer: the whole traceback is never one
# string), then a count at the 10th, 100th ... time. Loaded only while one is told (log.user_exc).
import io
import sys

from uplink import log

SEEN = 4  # distinct errors counted at once (a fifth starts the count again)

KEEP = 2  # frames: the line that failed and the one that called it
LINE = 96  # bytes of a traceback line kept (a long path is cut)
_FILE = b'  File "'


class _Frames(io.IOBase):
    def __init__(self):
        self.line = bytearray(LINE)
        self.n = 0
        self.quoted = False  # the file name's closing quote seen on this line
        self.frames = []

    def write(self, b):  # pieces of the traceback text, split anywhere
        line, n = self.line, self.n
        for i in range(len(b)):
            c = b[i]
            if c == 10:
                if line[:8] == _FILE:
                    self.frames.append(bytes(line[8:n]))
                    if len(self.frames) > KEEP:
                        self.frames.pop(0)
                n = 0
                self.quoted = False
            elif n >= 8 and not self.quoted and line[:8] == _FILE and c in (47, 34):
                if c == 47:  # a directory: only the file's own name is kept ("sensor.py")
                    n = 8
                    continue
                self.quoted = True
                if n < LINE:
                    line[n] = c
                    n += 1
            elif n < LINE:
                line[n] = c
                n += 1
        self.n = n
        return len(b)


def frames(e):
    """'file:line in function' of the traceback's last frames, outermost first; '' if none."""
    w = _Frames()
    sys.print_exception(e, w)
    out = []
    for f in w.frames:  # b'user.py", line 12, in read'
        path, _, rest = f.partition(b'", line ')
        num, _, fn = rest.partition(b", in ")
        out.append("%s:%s in %s" % (str(path, "utf-8"), str(num, "utf-8"), str(fn, "utf-8")))
    return " > ".join(out)


def report(tag, msg, e):
    seen = log._seen
    key = "%s %s %s" % (msg, type(e).__name__, e)
    n = seen.get(key, 0) + 1
    if n == 1 and len(seen) >= SEEN:
        seen.clear()
    seen[key] = n
    if n == 1:
        at = frames(e)
        log.error(tag, "%s: %s: %s%s" % (msg, type(e).__name__, e, " (at %s)" % at if at else ""))
        return
    k = n
    while k % 10 == 0:
        k //= 10
    if k == 1:  # 10, 100, 1000 ...
        log.error(tag, "%s: %s: %s (%d times so far)" % (msg, type(e).__name__, e, n))
