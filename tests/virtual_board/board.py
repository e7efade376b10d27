# A virtual board: MicroPython (unix port) speaking the raw-REPL protocol mpremote uses, on
# stdin/stdout, with its filesystem in a host directory. Run by launcher.py, which connects
# stdin/stdout to a pty so mpremote (and `uplink deploy`) can open it like a serial port.
#
#   micropython board.py ROOT_DIR EVENTS_FILE
#
# Friendly REPL: banner and ">>> "; Ctrl-A enters the raw REPL, Ctrl-D soft-reboots.
# Raw REPL: bytes collect until Ctrl-D, then "OK", the program's output, "\x04", the
# traceback if any, "\x04", ">". Ctrl-D on an empty buffer soft-reboots; Ctrl-B leaves;
# the raw-paste request (Ctrl-E A Ctrl-A) gets "R\x00" (not supported), so mpremote falls
# back to plain raw REPL. machine.reset() is recorded in EVENTS_FILE and acts as a reboot;
# the reboot models firmware/main.py's maintenance hold: a "hold" file is removed and
# recorded ("hold"); without one the app would start (not modelled: nothing to record).
import os
import sys

ROOT = sys.argv[1]
EVENTS = sys.argv[2]
rd = sys.stdin.buffer
wr = sys.stdout.buffer
BANNER = b"MicroPython virtual board; Uplink test harness\r\nType \"help()\" for more information.\r\n>>> "
RAW = b"raw REPL; CTRL-B to exit\r\n>"


def out(b):
    wr.write(b)
    try:
        wr.flush()
    except Exception:
        pass


# opened before the mount below: afterwards only ROOT is reachable
_events = open(EVENTS, "a")


def event(text):
    _events.write(text + "\n")
    _events.flush()


class Reset(Exception):
    pass


class FakeMachine:
    def reset(self):
        raise Reset()

    def soft_reset(self):
        raise Reset()

    def unique_id(self):
        return b"\x76\x62\x00\x00\x00\x01"


sys.modules["machine"] = FakeMachine()
os.mount(os.VfsPosix(ROOT), "/")
os.chdir("/")


def fresh():
    return {"__name__": "__main__"}


def main():
    g = fresh()
    raw = False
    buf = bytearray()
    out(BANNER)
    while True:
        c = rd.read(1)
        if not c:
            return
        if not raw:
            if c == b"\x01":
                raw = True
                buf = bytearray()
                out(b"\r\n" + RAW)
            elif c == b"\x04":
                g = fresh()
                event("soft-reboot")
                out(b"MPY: soft reboot\r\n" + BANNER)
            elif c == b"\x03":
                out(b"\r\n>>> ")
            continue
        if c == b"\x01":
            buf = bytearray()
            out(b"\r\n" + RAW)
        elif c == b"\x02":
            raw = False
            out(b"\r\n" + BANNER)
        elif c == b"\x03":
            buf = bytearray()
        elif c == b"\x05" and not buf:
            rest = rd.read(2)
            if rest == b"A\x01":
                out(b"R\x00")
            else:
                buf.extend(rest)
        elif c == b"\x04":
            if not buf:
                g = fresh()
                event("soft-reboot")
                out(b"\r\nMPY: soft reboot\r\n" + RAW)
                continue
            out(b"OK")
            try:
                exec(bytes(buf), g)
                out(b"\x04\x04")
            except Reset:
                event("reset")
                try:
                    os.remove("hold")
                    event("hold")
                except OSError:
                    pass
                g = fresh()
                raw = False
                out(b"\x04\x04")
            except BaseException as e:  # noqa: B036
                out(b"\x04")
                sys.print_exception(e, sys.stdout)
                out(b"\x04")
            buf = bytearray()
            if raw:
                out(b">")
            else:
                out(BANNER)
        else:
            buf.extend(c)


main()
