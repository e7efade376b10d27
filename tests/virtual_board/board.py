# A virtual board: MicroPython (unix port) speaking the raw-REPL protocol mpremote uses, on
# stdin/stdout, with its filesystem in a host directory. Run by launcher.py, which connects
# stdin/stdout to a pty so mpremote (and `uplink deploy`) can open it like a serial port.
#
#   micropython board.py ROOT_DIR EVENTS_FILE [no-deflate] [no-raw-paste]
#
# Friendly REPL: banner and ">>> ", lines echoed and run; Ctrl-A enters the raw REPL, Ctrl-D
# soft-reboots.
# Raw REPL: bytes collect until Ctrl-D, then "OK", the program's output, "\x04", the
# traceback if any, "\x04", ">". Ctrl-D on an empty buffer soft-reboots; Ctrl-B leaves.
# Raw paste (Ctrl-E A Ctrl-A), as MicroPython's shared/runtime/pyexec.c do_reader_stdin does
# it on the ESP32: "R\x01", the window (half of MICROPY_REPL_STDIN_BUFFER_MAX, 256 by
# default: 128) and one "\x01" for the first window, one "\x01" per window consumed,
# "\x04" when the host's Ctrl-D ends the code (mp_reader_stdin_readbyte), then the output
# and traceback as in raw REPL, without "OK". "no-raw-paste" answers "R\x00" (firmware
# before 1.14) and mpremote falls back to plain raw REPL; "no-deflate" hides the `deflate`
# module (firmware before 1.21, or a build without it); "version=1.20.0" and "mpy=262" make
# `sys.implementation` tell another firmware version and .mpy ABI; "reenumerate" is a chip
# on its own USB (ESP32-S3/C3), whose port goes away at machine.reset() and comes back under
# another name (the launcher does it when it reads USB_GONE). machine.reset() is
# recorded in EVENTS_FILE and acts as a reboot; the reboot models firmware/main.py's
# maintenance hold: a "hold" file is removed and recorded ("hold"); without one the app
# would start (not modelled: nothing to record).
import os
import sys

ROOT = sys.argv[1]
EVENTS = sys.argv[2]
RAW_PASTE = "no-raw-paste" not in sys.argv[3:]
WINDOW = 128
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


REENUMERATE = "reenumerate" in sys.argv[3:]
# told to the launcher in the output stream: the chip's own USB leaves with the reset
USB_GONE = b"\x00\x00usb-reenumerate\x00\x00"


class Reset(Exception):
    pass


class FakeMachine:
    def reset(self):
        raise Reset("hard")

    def soft_reset(self):
        raise Reset("soft")

    def unique_id(self):
        return b"\x76\x62\x00\x00\x00\x01"


class NoModule:
    pass


sys.modules["machine"] = FakeMachine()


class OldSys:
    """`sys` as firmware of another version shows it ("version=1.20.0", "mpy=262")."""

    def __init__(self, real, version, mpy):
        self._real = real
        impl = real.implementation
        self.implementation = type("impl", (), {"name": impl.name, "version": version, "_mpy": mpy})()

    def __getattr__(self, name):
        return getattr(self._real, name)


_ver = [a[8:] for a in sys.argv[3:] if a.startswith("version=")]
_mpy = [a[4:] for a in sys.argv[3:] if a.startswith("mpy=")]
if _ver or _mpy:
    _impl = sys.implementation
    sys.modules["sys"] = OldSys(
        sys, tuple(int(n) for n in _ver[0].split(".")) + ("",) if _ver else _impl.version,
        int(_mpy[0]) if _mpy else _impl._mpy)
if "no-deflate" in sys.argv[3:]:
    # loaded modules are looked up before built-ins: `from deflate import X` -> ImportError
    sys.modules["deflate"] = NoModule()
_frozen = [a[7:] for a in sys.argv[3:] if a.startswith("frozen=")]
os.mount(os.VfsPosix(ROOT), "/")
os.chdir("/")
if _frozen:
    # the image's frozen modules, stood in for by a directory outside the board's filesystem,
    # after the port's own on the module path (as .frozen is on an ESP32)
    os.mount(os.VfsPosix(_frozen[0]), "/.image")
    sys.path.append("/.image")


def fresh():
    return {"__name__": "__main__"}


def paste(buf):
    """Raw-paste code into buf, with the board's flow control; False on Ctrl-C."""
    left = WINDOW
    while True:
        c = rd.read(1)
        if not c or c == b"\x03":
            out(b"\x04")
            return False
        if c == b"\x04":
            out(b"\x04")
            return True
        buf.extend(c)
        left -= 1
        if not left:
            out(b"\x01")
            left = WINDOW


def run(buf, g):
    """Execute buf as the raw REPL does; False when the program reset the board."""
    try:
        exec(bytes(buf), g)
        out(b"\x04\x04")
    except Reset as e:
        out(b"\x04\x04")
        rebooted(e)
        return False
    except BaseException as e:  # noqa: B036
        out(b"\x04")
        sys.print_exception(e, sys.stdout)
        out(b"\x04")
    return True


def rebooted(e):
    """What a reset does: the boot after it honours (and removes) the hold flag; a chip on its
    own USB leaves the host's port."""
    event("reset")
    try:
        os.remove("hold")
        event("hold")
    except OSError:
        pass
    if REENUMERATE and e.args[0] == "hard":
        out(USB_GONE)


def friendly(line, g):
    """One line at the friendly REPL: an expression's value is printed, as MicroPython does.
    False when the line reset the board."""
    if not line.strip():
        return True
    try:
        try:
            code = compile(line, "<stdin>", "single")
        except SyntaxError:
            code = compile(line, "<stdin>", "exec")
        exec(code, g)
    except Reset as e:
        rebooted(e)
        return False
    except Exception as e:
        sys.print_exception(e, sys.stdout)
    return True


def main():
    g = fresh()
    raw = False
    buf = bytearray()
    line = bytearray()  # the friendly REPL's
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
                line = bytearray()
                out(b"\r\n>>> ")
            elif c == b"\r":
                out(b"\r\n")
                if friendly(bytes(line), g):
                    out(b">>> ")
                else:
                    g = fresh()
                    out(BANNER)
                line = bytearray()
            elif c >= b" ":
                line.extend(c)
                out(c)  # the echo a terminal shows
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
            if rest != b"A\x01":
                buf.extend(rest)
                continue
            if not RAW_PASTE:
                out(b"R\x00")
                continue
            out(b"R\x01" + bytes([WINDOW & 0xFF, WINDOW >> 8, 1]))
            if paste(buf):
                raw = run(buf, g)
                if not raw:
                    g = fresh()
            else:  # Ctrl-C while pasting: pyexec raises KeyboardInterrupt
                out(b"\x04KeyboardInterrupt: \r\n\x04")
            buf = bytearray()
            out(b">" if raw else BANNER)
        elif c == b"\x04":
            if not buf:
                g = fresh()
                event("soft-reboot")
                out(b"\r\nMPY: soft reboot\r\n" + RAW)
                continue
            out(b"OK")
            raw = run(buf, g)
            if not raw:
                g = fresh()
            buf = bytearray()
            out(b">" if raw else BANNER)
        else:
            buf.extend(c)


main()
