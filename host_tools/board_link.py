"""Talking to a MicroPython board over its serial port: the only module that uses mpremote.

`BoardLink(port)` opens the port (mapping the usual failures to messages a person can act
on), enters the raw REPL and offers what deploy needs: hash many files in one round trip,
write files atomically (temp + rename), make directories, remove files, reset.

Files travel compressed when the firmware has the `deflate` module (MicroPython 1.21 on;
the ESP32 port has it, decompression only): raw deflate with a 1 KB window, made on this
machine with zlib, carried as 8-bit bytes literals in the code each exec sends, and inflated
on the board straight into the file, 512 bytes at a time. A board without `deflate` gets
base64 (or, without `binascii`, mpremote's own `fs cp`).
"""

from __future__ import annotations

import ast
import base64
import errno
import grp
import hashlib
import os
import re
import time
import zlib
from collections.abc import Callable, Iterable

from host_tools.errors import ExitCode, UplinkError

MANIFEST = ".uplink-manifest.json"
HOLD = "hold"  # firmware/main.py: a boot that finds it starts no app and arms no watchdog
# firmware/uplink/board.py RESET_MARK: a HARD reset with it is not counted as a crash (a panic)
RESET_MARK = "reset.mark"


class BoardError(UplinkError):
    """The board or its port is not usable; the message says what to do."""

    code = ExitCode.BOARD


class BoardExecError(BoardError):
    """Code sent to the board raised there: the board itself still answers."""


# What ends a bytes literal, its line or the source in MicroPython's lexer (py/lexer.c: NUL is
# MP_LEXER_EOF, next_char turns CR into LF, parse_string_literal stops at the quote or LF),
# and the control bytes the raw REPL acts on while code arrives (shared/runtime/pyexec.c:
# Ctrl-A..Ctrl-D in raw REPL, Ctrl-C and Ctrl-D in raw paste). Every other byte goes as
# itself: parse_string_literal keeps bytes literals 8-bit clean (CPython would refuse them).
_SPECIAL = re.compile(rb"([\x00-\x04\n\r'\\])(?=([0-7]?))")
_SHORT = {0x0A: b"\\n", 0x0D: b"\\r", 0x27: b"\\'", 0x5C: b"\\\\"}


def _escape(m: re.Match) -> bytes:
    c = m.group(1)[0]
    if c in _SHORT:
        return _SHORT[c]
    # an octal escape takes up to three digits: a digit after it needs the long form
    return b"\\%03o" % c if m.group(2) else b"\\%o" % c


def bytes_literal(data: bytes) -> bytes:
    """b'...' source that MicroPython (and CPython) read back as data: ~1.03 bytes per byte
    of compressed data, where base64 takes 1.33."""
    return b"b'" + _SPECIAL.sub(_escape, data) + b"'"


WBITS = 10  # inflate window on the board: 1 KB (DeflateIO allocates 2**wbits)


def deflate_raw(data: bytes) -> bytes:
    """Raw deflate that DeflateIO(stream, RAW, WBITS) inflates: zlib never refers back further
    than its window (2**WBITS bytes, less its lookahead), so the board's window is enough."""
    c = zlib.compressobj(9, zlib.DEFLATED, -WBITS, 9)
    return c.compress(data) + c.flush()


# Defined on the board once per session, before the first compressed file. _o opens
# PATH.tmp, _w inflates one piece into it (each piece is a whole raw-deflate stream: nothing
# carries between execs but the file and the hash), _c checks the sha256 of what was written
# and renames it into place, so a damaged copy never replaces a file. The rename alone replaces
# it (atomic on littlefs; VfsFat removes the old file itself, extmod/vfs_fat.c): removing the
# old file when a rename fails would lose it (config.json) when the second rename fails too.
_HELPERS = """\
_b=bytearray(512)
_m=memoryview(_b)
def _o(p):
 global _f,_h,_p
 _p=p;_h=hashlib.sha256();_f=open(p+'.tmp','wb')
def _w(s):
 z=_Z(io.BytesIO(s),_R,%d)
 while 1:
  n=z.readinto(_b)
  if not n:break
  _f.write(_m[:n]);_h.update(_m[:n])
def _c(x):
 _f.close();t=_p+'.tmp'
 if _h.digest()!=x:
  os.remove(t);raise OSError(_p+' arrived damaged (sha256 differs), nothing replaced: deploy again')
 try:
  os.rename(t,_p)
 except OSError as e:
  raise OSError(_p+' not replaced (the old one is kept): rename failed: '+str(e))
def _x():
 try:
  _f.close();os.remove(_p+'.tmp')
 except Exception:
  pass
""" % WBITS


def _port_group(port: str) -> str:
    try:
        return grp.getgrgid(os.stat(port).st_gid).gr_name
    except (OSError, KeyError):
        return "dialout"  # Debian/Ubuntu; Arch and Fedora use uucp / dialout


def _termios_error() -> type[Exception]:
    try:
        import termios
    except ImportError:  # Windows: pyserial does not use it there
        return OSError
    return termios.error


def explain_open_error(port: str, e: BaseException) -> BoardError:
    """Map an error from opening a serial port to an actionable message."""
    code = getattr(e, "errno", None)
    text = str(e)
    if code is None:
        for c in (errno.EACCES, errno.EBUSY, errno.EAGAIN, errno.ENOENT):
            if f"[Errno {c}]" in text:
                code = c
                break
    if code in (errno.EACCES, errno.EPERM):
        group = _port_group(port)
        return BoardError(
            f"no permission to open {port}: it belongs to group '{group}'. Add yourself: "
            f"`sudo usermod -aG {group} $USER`, then log out and in again"
        )
    if code in (errno.EBUSY, errno.EAGAIN) or "exclusively lock" in text:
        return BoardError(
            f"{port} is busy: another program has it open (a serial monitor, screen, Thonny, "
            "an IDE). Close it and retry"
        )
    if code == errno.ENOENT or "No such file" in text:
        return BoardError(f"no serial port {port}: is the board plugged in? `uplink devices` lists ports")
    return BoardError(f"cannot open {port}: {text}")


def check_port(port: str) -> None:
    """Open and close the port exclusively, so busy / permission problems are told apart."""
    import serial

    try:
        s = serial.Serial(port, 115200, exclusive=True, timeout=0)
    except (serial.SerialException, OSError) as e:
        raise explain_open_error(port, e) from None
    s.close()


class BoardLink:
    def __init__(self, port: str, *, timeout: float = 8.0):
        from mpremote.transport import TransportError

        from host_tools import ports

        self.port = port
        self._TransportError = TransportError
        self.usb = ports.usb_identity(port)  # to find it again after a reset
        self._open(timeout)

    def _open(self, timeout: float, attempts: int = 2) -> None:
        from mpremote.transport_serial import SerialTransport

        check_port(self.port)
        try:
            self.t = SerialTransport(self.port, baudrate=115200)
        except self._TransportError as e:
            raise explain_open_error(self.port, e) from None
        except _termios_error() as e:  # pyserial's own open: the port went away (a reset USB chip) meanwhile
            raise BoardError(f"{self.port} went away while it was being opened ({e})") from None
        self._enter(timeout, attempts)

    def _reopen(self, timeout: float) -> None:
        """After a reset of a chip on its own USB (ESP32-S3, C3): the port went away with the
        chip, so the open handle is dead. Find the device again by VID:PID and serial number
        (it may come back as another /dev/ttyACMn) and enter the raw REPL there."""
        from host_tools import ports

        assert self.usb
        self.close()
        deadline = time.monotonic() + timeout
        problem: BoardError | None = None
        while time.monotonic() < deadline:
            port = ports.find_usb(self.usb)
            if port:
                self.port = port
                try:
                    self._open(max(1.0, min(4.0, deadline - time.monotonic())), attempts=1)
                    return
                except BoardError as e:  # still going away, or not up yet
                    problem = e
            time.sleep(0.2)
        raise BoardError(f"the board (USB {self.usb['vid_pid']}, serial {self.usb['serial_number']}) did not "
                         f"come back within {timeout:.0f} s of its reset"
                         + (f" ({problem})" if problem else ": `uplink devices` lists what is plugged in"))

    def _enter(self, timeout: float, attempts: int = 2) -> None:
        # Two tries: the Ctrl-C that stops a running app may reset an ESP32 into the
        # maintenance hold (its watchdog cannot be stopped), and the first try then talks to
        # a board that is rebooting.
        for attempt in range(attempts):
            try:
                # a read timeout only while getting in: with none, a silent port blocks forever
                self.t.serial.timeout = 1.0
                self.t.enter_raw_repl(soft_reset=True, timeout_overall=timeout)
                self.t.serial.timeout = None
                break
            except (self._TransportError, OSError) as e:
                if attempt + 1 < attempts:
                    continue
                self.close()
                raise BoardError(
                    f"no MicroPython board answered on {self.port} ({e}). Is MicroPython on it "
                    "(`uplink flash-micropython`)? Is it stuck in a program that ignores Ctrl-C? "
                    "Press its reset button and retry"
                ) from None
        # one round trip: what the firmware can decode, its version and the .mpy files it loads
        got = self.exec("import os, hashlib, io, sys\ntry:\n from binascii import a2b_base64 as _d\n"
                        "except ImportError:\n _d=None\n"
                        "try:\n from deflate import DeflateIO as _Z, RAW as _R\n"
                        "except ImportError:\n _Z=None\n"
                        "_i=sys.implementation\n"
                        "print(repr((_d is not None, _Z is not None, tuple(_i.version[:3]), "
                        "getattr(_i, '_mpy', None))))").decode().strip()
        try:
            self.has_b64, self.has_deflate, version, self.sys_mpy = ast.literal_eval(got)
        except (ValueError, SyntaxError):
            raise BoardError(f"the board answered {got[:80]!r} when asked its MicroPython version: "
                             "is it running MicroPython?") from None
        self.version: tuple[int, ...] = tuple(version)
        self._helpers = False  # a reset forgets them

    # -- the maintenance hold ---------------------------------------------------------------
    def enter_hold(self, timeout: float = 15.0) -> bool:
        """Reset the board into the maintenance hold: the flag file, then machine.reset();
        the boot that finds the flag (firmware/main.py) removes it and starts neither the app
        nor its watchdog, which on an ESP32 cannot be stopped once armed and would otherwise
        race the copy. True when the board honoured the hold (firmware without it: False)."""
        from host_tools import ports

        self.exec(f"f=open({HOLD!r},'w')\nf.write('deploy')\nf.close()")
        self.reset()
        if ports.leaves_at_reset(self.usb):
            self._reopen(timeout)
        else:  # a USB-serial bridge keeps its port: the handle stays good
            self._enter(timeout, attempts=3)
        return not self.eval(f"{HOLD!r} in os.listdir()")

    def leave_hold(self) -> None:
        """No flag left behind (firmware that did not honour it): the next reset starts the
        app. The reset itself is the caller's (`uplink deploy --no-reset` stays held)."""
        self.remove(HOLD)

    # -- primitives -----------------------------------------------------------------------
    def exec(self, code: str | bytes) -> bytes:
        from mpremote.transport import TransportExecError

        try:
            return self.t.exec(code)
        except TransportExecError as e:
            raise BoardExecError(f"the board reported an error: {e.error_output.strip().splitlines()[-1]}") from None
        except self._TransportError as e:
            raise BoardError(f"lost the board on {self.port}: {e}") from None

    def eval(self, expr: str):
        return ast.literal_eval(self.exec(f"print(repr({expr}))").decode().strip())

    def hashes(self, paths: list[str]) -> dict[str, str | None]:
        """sha256 hex of each file on the board (None: absent), in one round trip."""
        code = (
            "def _h(p):\n"
            " try:\n  f=open(p,'rb')\n except OSError:\n  return None\n"
            " h=hashlib.sha256();b=bytearray(512);m=memoryview(b)\n"
            " while True:\n  n=f.readinto(b)\n  if not n:\n   break\n  h.update(m[:n])\n"
            " f.close()\n return h.digest()\n"
            f"print(repr([_h(p) for p in {paths!r}]))\n"
        )
        raw = ast.literal_eval(self.exec(code).decode().strip())
        return {p: (d.hex() if d is not None else None) for p, d in zip(paths, raw, strict=True)}

    def survey(self, digests: dict[str, bytes]) -> dict[str, str]:
        """Compare each file on the board with the sha256 this machine has, on the board, in
        one round trip: "same", "changed" or "new" (absent). Only a letter a file comes back."""
        code = (
            b"def _h(p):\n"
            b" try:\n  f=open(p,'rb')\n except OSError:\n  return None\n"
            b" h=hashlib.sha256();b=bytearray(512);m=memoryview(b)\n"
            b" while True:\n  n=f.readinto(b)\n  if not n:\n   break\n  h.update(m[:n])\n"
            b" f.close()\n return h.digest()\n"
            b"r=''\nfor p,x in ["
            + b",".join(b"(%s,%s)" % (repr(p).encode(), bytes_literal(d)) for p, d in digests.items())
            + b"]:\n d=_h(p)\n r+='n' if d is None else '=' if d==x else 'c'\nprint(r)\n"
        )
        got = self.exec(code).decode().strip()
        word = {"=": "same", "c": "changed", "n": "new"}
        if len(got) != len(digests) or set(got) - set(word):
            raise BoardError(f"the board answered {got[:80]!r} to the file comparison: is it running MicroPython?")
        return {p: word[c] for p, c in zip(digests, got, strict=True)}

    def read(self, path: str) -> bytes | None:
        try:
            return self.t.fs_readfile(path)
        except OSError:
            return None

    def mkdirs(self, dirs: list[str]) -> None:
        if not dirs:
            return
        self.exec(
            f"for d in {sorted(dirs)!r}:\n"
            " try:\n  os.mkdir(d)\n except OSError:\n  pass\n"
        )

    CHUNK = 1024  # bytes of file per exec on the base64 path (4/3 on the wire)
    PIECE = 4096  # bytes of file per compressed piece (~3 KB literal, a 1 KB window on the board)
    BATCH = 4096  # bytes of code per exec on the compressed path: small files share one

    def write_atomic(self, path: str, data: bytes, progress: Callable[[int], None] | None = None) -> None:
        """Write to PATH.tmp, then rename over PATH: a power cut leaves the old or the new file,
        and a rename that fails (a full flash) the old one, with BoardExecError naming it."""
        self.write_files([(path, data)], (lambda _p, n: progress(n)) if progress else None)

    def write_files(self, files: Iterable[tuple[str, bytes]],
                    progress: Callable[[str, int], None] | None = None) -> None:
        """write_atomic for each (path, data), in order; progress(path, bytes of file done)."""
        if self.has_deflate:
            self._write_deflated(files, progress)
            return
        for path, data in files:
            tmp = path + ".tmp"
            step = (lambda n, path=path: progress(path, n)) if progress else None
            if not self.has_b64:  # a build without binascii: mpremote's own way
                self._write_plain(tmp, data, step)
            else:
                self._write_b64(tmp, data, step)
            self._rename(tmp, path)

    def _write_deflated(self, files: Iterable[tuple[str, bytes]],
                        progress: Callable[[str, int], None] | None) -> None:
        if not self._helpers:
            self.exec(_HELPERS)
            self._helpers = True
        batch: list[bytes] = []
        size = done = 0
        path = ""

        def send() -> None:
            nonlocal size, done
            try:
                self.exec(b"".join(batch))
            except BoardExecError:
                try:
                    self.exec("_x()")  # close and drop the half-written PATH.tmp
                except BoardError:
                    pass
                raise
            if progress and done:
                progress(path, done)
            batch.clear()
            size = done = 0

        for path, data in files:
            pieces = [data[i:i + self.PIECE] for i in range(0, len(data), self.PIECE)] or [b""]
            for k, piece in enumerate(pieces):
                code = b"_o(%s)\n" % repr(path).encode() if k == 0 else b""
                code += b"_w(%s)\n" % bytes_literal(deflate_raw(piece))
                if k == len(pieces) - 1:
                    code += b"_c(%s)\n" % bytes_literal(hashlib.sha256(data).digest())
                if batch and size + len(code) > self.BATCH:
                    send()
                batch.append(code)
                size += len(code)
                done += len(piece)
        if batch:
            send()

    def _write_b64(self, tmp: str, data: bytes, progress: Callable[[int], None] | None) -> None:
        self.exec(f"f=open({tmp!r},'wb')\nw=f.write")
        try:
            for i in range(0, len(data), self.CHUNK):
                chunk = data[i:i + self.CHUNK]
                self.exec("w(_d('" + base64.b64encode(chunk).decode() + "'))")
                if progress:
                    progress(len(chunk))
        finally:
            self.exec("f.close()")

    def _rename(self, tmp: str, path: str) -> None:
        # the rename alone (see _HELPERS): on failure the old file stays, PATH.tmp goes
        self.exec(
            f"try:\n os.rename({tmp!r},{path!r})\nexcept OSError as e:\n"
            f" try:\n  os.remove({tmp!r})\n except OSError:\n  pass\n"
            f" raise OSError('%s not replaced (the old one is kept): rename failed: %s'%({path!r},e))\n"
        )

    def _write_plain(self, tmp: str, data: bytes, progress) -> None:
        done = 0

        def cb(written, _total):
            nonlocal done
            if progress:
                progress(written - done)
            done = written

        try:
            self.t.fs_writefile(tmp, data, chunk_size=256, progress_callback=cb)
        except OSError as e:
            raise BoardError(f"writing {tmp} on the board failed: {e}") from None

    def remove(self, path: str) -> None:
        self.exec(f"try:\n os.remove({path!r})\nexcept OSError:\n pass\n")

    def rmdirs(self, paths: list[str]) -> None:
        """Remove each directory that is empty (deepest first); others stay."""
        self.exec(f"for d in {paths!r}:\n try:\n  os.rmdir(d)\n except OSError:\n  pass\n")

    def reset(self) -> None:
        """machine.reset(): the board reboots into the new firmware. Marked as the firmware
        marks its own resets, so safe mode does not count it as a crash."""
        try:
            self.t.exec_raw_no_follow(f"try:\n open({RESET_MARK!r},'w').close()\nexcept OSError:\n pass\n"
                                      "import machine\nmachine.reset()")  # (a full flash: reset all the same)
        except (self._TransportError, OSError):
            # the board went away mid-answer: that is what a reset looks like. A chip on its own
            # USB may vanish under the read: pyserial's SerialException (an OSError), "device
            # reports readiness to read but returned no data"
            pass

    def leave(self) -> None:
        """Back to the friendly REPL (Ctrl-B), without resetting."""
        try:
            self.t.exit_raw_repl()
        except (self._TransportError, OSError):
            pass

    def close(self) -> None:
        try:
            self.t.close()
        except Exception:  # noqa: BLE001 - closing a port that already went away
            pass
