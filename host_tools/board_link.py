"""Talking to a MicroPython board over its serial port: the only module that uses mpremote.

`BoardLink(port)` opens the port (mapping the usual failures to messages a person can act
on), enters the raw REPL and offers what deploy needs: hash many files in one round trip,
write a file atomically (temp + rename), make directories, remove files, reset.
"""

from __future__ import annotations

import ast
import base64
import errno
import grp
import os
from collections.abc import Callable

MANIFEST = ".uplink-manifest.json"
HOLD = "hold"  # firmware/main.py: a boot that finds it starts no app and arms no watchdog


class BoardError(Exception):
    """The board or its port is not usable; the message says what to do."""


def _port_group(port: str) -> str:
    try:
        return grp.getgrgid(os.stat(port).st_gid).gr_name
    except (OSError, KeyError):
        return "dialout"  # Debian/Ubuntu; Arch and Fedora use uucp / dialout


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
            f"{port} is busy: another program has it open (a serial monitor, `uplink logs`, "
            "screen, Thonny, an IDE). Close it and retry"
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
        from mpremote.transport_serial import SerialTransport

        self.port = port
        self._TransportError = TransportError
        check_port(port)
        try:
            self.t = SerialTransport(port, baudrate=115200)
        except TransportError as e:
            raise explain_open_error(port, e) from None
        self._enter(timeout)

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
        self.exec("import os, hashlib\ntry:\n from binascii import a2b_base64 as _d\n"
                  "except ImportError:\n _d=None")
        self.has_b64 = bool(self.eval("_d is not None"))

    # -- the maintenance hold ---------------------------------------------------------------
    def enter_hold(self, timeout: float = 15.0) -> bool:
        """Reset the board into the maintenance hold: the flag file, then machine.reset();
        the boot that finds the flag (firmware/main.py) removes it and starts neither the app
        nor its watchdog, which on an ESP32 cannot be stopped once armed and would otherwise
        race the copy. True when the board honoured the hold (firmware without it: False)."""
        self.exec(f"f=open({HOLD!r},'w')\nf.write('deploy')\nf.close()")
        self.reset()
        self._enter(timeout, attempts=3)
        return not self.eval(f"{HOLD!r} in os.listdir()")

    def leave_hold(self) -> None:
        """No flag left behind (firmware that did not honour it): the next reset starts the
        app. The reset itself is the caller's (`uplink deploy --no-reset` stays held)."""
        self.remove(HOLD)

    # -- primitives -----------------------------------------------------------------------
    def exec(self, code: str) -> bytes:
        from mpremote.transport import TransportExecError

        try:
            return self.t.exec(code)
        except TransportExecError as e:
            raise BoardError(f"the board reported an error: {e.error_output.strip().splitlines()[-1]}") from None
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

    CHUNK = 1024  # bytes of file per exec; base64 on the wire (4/3), not repr()'s \\xNN (4/1)

    def write_atomic(self, path: str, data: bytes, progress: Callable[[int], None] | None = None) -> None:
        """Write to PATH.tmp, then rename over PATH: a power cut leaves the old or the new file.
        (FAT cannot rename over an existing file: there the old one is removed first.)"""
        tmp = path + ".tmp"
        if not self.has_b64:  # a build without binascii: mpremote's own way
            self._write_plain(tmp, data, progress)
        else:
            self.exec(f"f=open({tmp!r},'wb')\nw=f.write")
            try:
                for i in range(0, len(data), self.CHUNK):
                    chunk = data[i:i + self.CHUNK]
                    self.exec("w(_d('" + base64.b64encode(chunk).decode() + "'))")
                    if progress:
                        progress(len(chunk))
            finally:
                self.exec("f.close()")
        self.exec(
            f"try:\n os.rename({tmp!r},{path!r})\nexcept OSError:\n"
            f" os.remove({path!r})\n os.rename({tmp!r},{path!r})\n"
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

    def reset(self) -> None:
        """machine.reset(): the board reboots into the new firmware."""
        try:
            self.t.exec_raw_no_follow("import machine\nmachine.reset()")
        except self._TransportError:
            pass  # the board went away mid-answer: that is what a reset looks like

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
