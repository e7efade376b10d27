"""`uplink sim`: the firmware on the host board, booted again whenever it resets itself (as a
board would), until Ctrl-C or `seconds`; then a verdict a person can act on when it did not
run: a crash loop that ended in safe mode, or a heap too small for it."""

from __future__ import annotations

import codecs
import contextlib
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from host_tools import child, hostboard
from host_tools.errors import ExitCode, UplinkError
from host_tools.ui import plural

LOCK = "sim.lock"  # in the state directory: one simulated board per state directory


class SimBusy(UplinkError):
    code = ExitCode.BOARD


def lock_state(state: Path, device: str) -> int:
    """The state directory's lock, or SimBusy: two simulations of one device would be one MQTT
    client id twice, each disconnecting the other, over one outbox. The firmware inherits
    the lock (hostboard.start pass_fds), so it is held while either process lives."""
    fd = os.open(state / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        import fcntl  # (not on Windows: no lock there)
    except ImportError:
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise SimBusy(f"{device} is already running in another `uplink sim` (pid {pid}, state in "
                      f"{state}): stop that one first (Ctrl-C), or send it a command with "
                      f"`uplink sim {device} --send CMD JSON`") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


class _Hangup(Exception):
    pass


@contextlib.contextmanager
def _hangups_stop() -> Iterator[None]:
    """SIGHUP (the terminal closed) and SIGTERM end the run as Ctrl-C does: the firmware is
    stopped, not left behind."""
    def stop(signum, frame):
        raise _Hangup

    old = {}
    try:
        for sig in (signal.SIGHUP, signal.SIGTERM):
            old[sig] = signal.signal(sig, stop)
    except ValueError:  # not the main thread: no handlers, the parent-death signal remains
        pass
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _stdout_gone() -> None:
    # `uplink sim | head`: head has gone; later prints must not fail again at exit
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


# firmware/uplink/app.py _safe_mode(): the console line, then a wait of safe_mode_retry_s
# (20 minutes by default) before the next try. A simulation says why at once instead.
SAFE_MODE_LINE = "SAFE MODE:"
# firmware/main.py: the app could not even be imported (no memory, a half-copied firmware);
# it waits 30 s and resets, over and over. A simulation stops and says why at once.
CANNOT_START_LINE = "uplink: the firmware cannot start"


def default_heapsize(compiled: bool) -> str:
    """An ESP32 without PSRAM has 100-120 KB of heap: the compiled firmware with Wi-Fi
    networks, TLS and ThingsBoard's OTA task ran out at 112k on the ESP32 model and runs at
    128k, the host-board tests' budget. (mbedTLS's buffers are not in it: with -X heapsize
    the model takes them from libc; the chip, from its IDF heap, which the model's -X chip
    has.) The sources need more (compiled on the board: app.py alone, once it grew past 600
    lines, failed at 160k in a fresh checkout); the 64-bit PyPI port's 8-byte pointers and
    32-byte GC blocks 1.5x (tests/mpy_plugin.port_heap)."""
    return hostboard.budget_heap("128k" if compiled else "192k")


class _Watch:
    """Counts the MemoryErrors the firmware reports and sees it enter safe mode, line by line
    (chunks split lines)."""

    def __init__(self):
        self.memory_errors = 0
        self.safe_mode = False
        self.cannot_start = False
        self._partial = ""

    def feed(self, text: str) -> None:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()[-200:]  # a line's head is enough to recognise it
        self.memory_errors += sum("MemoryError" in line for line in lines)
        self.safe_mode = self.safe_mode or any(SAFE_MODE_LINE in line for line in lines)
        self.cannot_start = self.cannot_start or any(CANNOT_START_LINE in line for line in lines)


def _memory_hint(w: _Watch, heapsize: str, compiled: bool, chip: str | None = None) -> str:
    if not w.memory_errors:
        return ""
    where = f"in the {chip}'s memory" if chip else f"with a {heapsize} heap"
    hint = (f"; it ran out of memory {where} ({plural(w.memory_errors, 'MemoryError')} "
            "above): an ESP32 without PSRAM has about 100 KB, so make user.py or the firmware "
            "smaller, or try a larger --heapsize to see how much it needs")
    if not compiled:
        hint += ("; with --source the board's heap also compiles the modules: the board "
                 "runs the compiled build (drop --source)")
    return hint


def run(state: Path, *, seconds: float | None, compiled: bool, heapsize: str, chip: str | None = None,
        write: Callable[[str], None], info: Callable[[str], None],
        firmware: Path | None = None, lock_fd: int | None = None, romfs: Path | None = None) -> str | None:
    """Run until stopped; None when the firmware ran, else what went wrong."""
    with _hangups_stop():
        try:
            return _run(state, seconds, compiled, heapsize, chip, write, info, firmware, lock_fd, romfs)
        except _Hangup:  # between two boots: the firmware, tied to us, ends with this process
            return None


def _run(state, seconds, compiled, heapsize, chip, write, info, firmware, lock_fd, romfs) -> str | None:
    end = None if seconds is None else time.monotonic() + seconds
    watch = _Watch()
    # a UTF-8 character split between two reads (a payload's é in a pub: line) stays whole
    text = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while True:
        proc = hostboard.start(state, compiled=compiled, heapsize=heapsize, firmware=firmware, chip=chip,
                               romfs=romfs, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               pass_fds=() if lock_fd is None else (lock_fd,), tied=True)
        assert proc.stdout is not None
        stopped = False
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            try:
                while proc.poll() is None or sel.select(0):
                    if end is not None and time.monotonic() > end:
                        stopped = True
                        break
                    if sel.select(0.2):
                        data = os.read(proc.stdout.fileno(), 4096)
                        if not data:
                            break
                        chunk = text.decode(data)
                        watch.feed(chunk)
                        write(chunk)
                        if watch.safe_mode or watch.cannot_start:
                            break
            except (KeyboardInterrupt, _Hangup):
                stopped = True
            except BrokenPipeError:
                _stdout_gone()
                stopped = True
        hint = _memory_hint(watch, heapsize, compiled, chip)
        if watch.cannot_start:
            child.stop(proc)
            return f"the firmware cannot start (its output is above){hint}"
        if watch.safe_mode:
            child.stop(proc)
            why = _read(state / "safemode.txt") or "see its output above"
            if "crash exits in a row" in why:  # safemode.py's crash-loop guard, not a config error
                return f"the firmware crash-looped: {why}; it stopped in safe mode{hint}"
            return f"the firmware stopped in safe mode: {why}{hint}"
        if stopped:
            # a stop is not a crash: the firmware counts only crash exits (safemode.py)
            child.stop(proc)
            return f"the firmware kept running but failed{hint}" if hint else None
        code = proc.wait()
        proc.stdout.close()
        if hostboard.restarts(code):
            info("[host board] the firmware reset itself: booting again")
            continue
        if code == 0:
            return f"the firmware ended{hint}" if hint else None
        return f"the firmware stopped (exit code {code}; its output is above){hint}"


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
