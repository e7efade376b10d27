"""Start a virtual board (board.py in the MicroPython unix port) behind a pty.

The pty's slave end is set raw and its path is the "serial port" to give mpremote or
`uplink deploy --port`. The launcher keeps the master end and relays it to the board
program's stdin/stdout, counting the bytes in each direction: that is what went "over the
wire", to compare with the bytes of file content deployed.

`baud=115200` paces each direction as a UART would: 10 bits a byte (8N1), so 11520 bytes a
second each way, which is what a deploy's wall time depends on. `deflate=False` is a board
whose firmware has no `deflate` module, `raw_paste=False` one without raw-paste mode;
`version="1.20.0"` and `mpy=262` (sys.implementation._mpy) one that tells another firmware.

`usb={"vid": 0x303A, "pid": 0x1001, "serial_number": "..."}` is an ESP32-S3/C3 on its own USB:
at machine.reset() the port goes away (the host's open handle fails with EIO), and after
USB_GAP seconds the board is back on a new pty, under another name. `ports_file` is the
"port list" of the machine (a JSON list as tests/host/fake_ports.py reads it): empty while
the board is away, its new port once back.
`heap="64k"` runs the board on the ESP32 model (when installed) with that GC heap, so what a
deploy asks of the board's memory is asked of a 32-bit heap of that size. `romfs=FILE` (with
`heap`): the board's image has a ROMFS partition, FILE (the model's -X romfs).
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path

HERE = Path(__file__).resolve().parent
USB_GONE = b"\x00\x00usb-reenumerate\x00\x00"  # board.py's, in its output at a hard reset


def micropython_bin(heap: str | None = None, romfs: Path | None = None) -> list[str]:
    # the raw-REPL responder is a test tool, not firmware: the PyPI port runs it, unless the
    # test wants the board's heap (or ROMFS partition) modelled
    from host_tools import hostboard

    if heap:
        return [hostboard.micropython(), "-X", f"heapsize={heap}", *(["-X", f"romfs={romfs}"] if romfs else [])]
    return [hostboard.micropython(model=False)]


class VirtualBoard:
    def __init__(self, root: Path, *, baud: int | None = None, deflate: bool = True,
                 raw_paste: bool = True, heap: str | None = None, version: str | None = None,
                 mpy: int | None = None, usb: dict | None = None, romfs: Path | None = None,
                 frozen: Path | None = None):
        self.root = Path(root)
        self.romfs = romfs
        self.frozen = frozen  # a directory standing in for the image's frozen modules (.frozen)
        self.baud = baud
        self.heap = heap
        self.flags = ([] if deflate else ["no-deflate"]) + ([] if raw_paste else ["no-raw-paste"])
        self.flags += ([f"version={version}"] if version else []) + ([f"mpy={mpy}"] if mpy is not None else [])
        self.usb = usb
        self.flags += ["reenumerate"] if usb else []
        self.flags += [f"frozen={frozen}"] if frozen else []
        self.ports_file = self.root.parent / (self.root.name + ".ports.json")
        self.reenumerations = 0
        self._stopped = False
        self._closed = False
        self.root.mkdir(parents=True, exist_ok=True)
        self.events_file = self.root.parent / (self.root.name + ".events")
        self.to_board = 0
        self.from_board = 0
        self.proc: subprocess.Popen | None = None
        self.port = ""
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()  # held to read or close a master: no read of a reused fd number
        self._retired: list[int] = []  # slaves of ports the board left
        self._wake: tuple[int, int] | None = None  # a pipe: stop() and a new master wake _pump_in

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> "VirtualBoard":
        self.master, self.slave = self._pty()
        self.port = os.ttyname(self.slave)
        self._wake = os.pipe()
        self._list_ports()
        env = dict(os.environ, MICROPYPATH=".frozen")
        self.proc = subprocess.Popen(
            [*micropython_bin(self.heap, self.romfs), str(HERE / "board.py"), str(self.root),
             str(self.events_file), *self.flags],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, bufsize=0,
        )
        self._threads = [
            threading.Thread(target=self._pump_in, daemon=True),
            threading.Thread(target=self._pump_out, daemon=True),
        ]
        for t in self._threads:
            t.start()
        return self

    def micropypath(self) -> str:
        """MICROPYPATH for a boot of the deployed filesystem (cwd): the port's frozen modules,
        and the stand-in for the image's after them."""
        return os.pathsep.join([".frozen", *([str(self.frozen)] if self.frozen else [])])

    @staticmethod
    def _pty() -> tuple[int, int]:
        master, slave = pty.openpty()
        tty.setraw(slave)
        return master, slave

    def _list_ports(self, present: bool = True) -> None:
        if not self.usb:
            return
        rows = [dict(self.usb, device=self.port, product="virtual board")] if present else []
        tmp = self.ports_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows))
        os.replace(tmp, self.ports_file)

    # the chip's USB is away this long after its reset (a real one: a second or so)
    USB_GAP = 0.3

    def _reenumerate(self) -> None:
        """The board's USB leaves and comes back under another name: the new pty is made
        before the old one is closed, and the old slave stays open until stop(), so no later
        move can get an earlier number either."""
        self._list_ports(present=False)
        with self._lock:  # _pump_in may be in select() on the old master: it reads only the current one
            old_master = self.master
            self._retired.append(self.slave)  # holds the old name: a second move cannot come back to it
            self.master, self.slave = self._pty()
            self.port = os.ttyname(self.slave)
            os.close(old_master)  # the host's handle on the old port: EIO, as a USB port gone
        if self._wake:
            os.write(self._wake[1], b"r")  # _pump_in: to the new master now
        time.sleep(self.USB_GAP)
        self._list_ports()
        self.reenumerations += 1

    def emit(self, data: bytes) -> None:
        """Bytes as if the running app printed them (to whoever has the port open)."""
        with self._lock:
            if self._stopped:
                raise OSError("the virtual board is stopped")
            os.write(self.master, data)

    # how long stop() waits for a relay stuck writing to a port nobody reads
    STOP_TIMEOUT = 10.0

    def stop(self) -> None:
        """The board and its relays end before the pty is closed: a relay still reading the
        master would read whatever file the caller opens next under the same fd number."""
        if self._closed:
            return  # closed once only: by now those numbers may be other files'
        with self._lock:
            self._stopped = True
        if self.proc and self.proc.poll() is None:
            self.proc.kill()  # _pump_out: end of the board's output
            self.proc.wait()
        if self._wake:
            os.write(self._wake[1], b"x")  # _pump_in: out of its select
        for t in self._threads:
            t.join(self.STOP_TIMEOUT)
        if any(t.is_alive() for t in self._threads):
            return  # a relay blocked in a write keeps its fds: leaked, not closed under it
        self._closed = True
        for fd in (self.master, self.slave, *self._retired, *(self._wake or ())):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- relays ---------------------------------------------------------------------------
    # Paced, a relay reads at most PACED_READ bytes at a time, so the host's writes back up in
    # the pty as they would in a serial driver's buffer instead of vanishing into a pipe.
    PACED_READ = 64

    def _pace(self, clock: list[float], n: int) -> None:
        """Hold n bytes until the wire would have carried them: clock[0] is when this
        direction's wire is next free."""
        if not self.baud:
            return
        now = time.monotonic()
        clock[0] = max(clock[0], now) + n * 10 / self.baud
        if clock[0] > now:
            time.sleep(clock[0] - now)

    def _pump_in(self) -> None:
        """pty master (what the host wrote to the port) -> board stdin."""
        assert self.proc and self.proc.stdin
        size = self.PACED_READ if self.baud else 4096
        clock = [0.0]
        assert self._wake
        wake = self._wake[0]
        while not self._stopped:
            fd = self.master  # a board that re-enumerated has a new one
            try:
                # the select may see a master closed since (EBADF, or its number reused):
                # the read happens only under the lock, on the master still current
                ready = select.select([fd, wake], [], [], 1.0)[0]
            except (OSError, ValueError):
                ready = []
            if wake in ready:
                os.read(wake, 64)
            with self._lock:
                if self._stopped:
                    return
                if fd not in ready or fd != self.master:
                    continue
                try:
                    data = os.read(fd, size)
                except OSError:
                    return
            if not data:
                return
            self._pace(clock, len(data))
            with self._lock:
                self.to_board += len(data)
            try:
                self.proc.stdin.write(data)
            except (BrokenPipeError, ValueError):
                return

    def _pump_out(self) -> None:
        """board stdout -> pty master (what the host reads from the port)."""
        assert self.proc and self.proc.stdout
        size = self.PACED_READ if self.baud else 4096
        clock = [0.0]
        held = b""  # the start of a USB_GONE split between two reads
        while True:
            data = (self.proc.stdout.read1(size) if hasattr(self.proc.stdout, "read1")
                    else os.read(self.proc.stdout.fileno(), size))
            if not data:
                return
            data, held = held + data, b""
            while self.usb and USB_GONE in data:
                before, data = data.split(USB_GONE, 1)
                if not self._to_host(before, clock):
                    return
                self._reenumerate()
            if self.usb:
                keep = next((k for k in range(len(USB_GONE) - 1, 0, -1) if data.endswith(USB_GONE[:k])), 0)
                data, held = (data[:-keep], data[-keep:]) if keep else (data, b"")
            if not self._to_host(data, clock):
                return

    def _to_host(self, data: bytes, clock: list[float]) -> bool:
        if not data:
            return True
        self._pace(clock, len(data))
        with self._lock:
            self.from_board += len(data)
        try:
            os.write(self.master, data)
        except OSError:
            return False
        return True

    # -- observations ---------------------------------------------------------------------
    @property
    def wire_bytes(self) -> int:
        with self._lock:
            return self.to_board + self.from_board

    def reset_counters(self) -> None:
        with self._lock:
            self.to_board = self.from_board = 0

    def events(self) -> list[str]:
        try:
            return self.events_file.read_text().split()
        except FileNotFoundError:
            return []

    def events_when(self, done, timeout: float = 10.0) -> list[str]:
        """The events once done(events) holds, or as they are after timeout: the board handles
        the last bytes a command sent (its closing reset) after the command has exited."""
        end = time.monotonic() + timeout
        ev = self.events()
        while not done(ev) and time.monotonic() < end:
            time.sleep(0.05)
            ev = self.events()
        return ev

    def stderr(self) -> str:
        if self.proc and self.proc.poll() is not None and self.proc.stderr:
            return self.proc.stderr.read().decode(errors="replace")
        return ""


if __name__ == "__main__":  # manual use: python -m tests.virtual_board.launcher DIR
    import time

    vb = VirtualBoard(Path(sys.argv[1])).start()
    print(f"virtual board on {vb.port} (filesystem {vb.root}); Ctrl-C to stop", flush=True)
    try:
        while vb.proc and vb.proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        vb.stop()
