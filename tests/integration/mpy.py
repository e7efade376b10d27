"""Run a MicroPython program from a CPython test and follow its output.

    p = mpy.start(code, env={"URL": broker.url()})   # firmware sources on the path
    p = mpy.start(code, compiled=True, heapsize="32k")  # the mpy-cross-compiled firmware
    p.expect("connected")      # waits for a line containing the text; fails with the output
    p.wait(30)                 # exit code; p.output holds everything printed

MICROPYPATH is firmware:tests/firmware:.frozen exactly as for the firmware tests (the same
helpers from tests/mpy_plugin.py), so a script can import `uplink` and `mptest`.
"""

from __future__ import annotations

import os
import queue
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from tests.mpy_plugin import (
    FIRMWARE,
    ROOT,
    compile_firmware,
    micropython_bin,
    micropython_env,
    port_heap,
)

_compiled: Path | None = None


def compiled_firmware() -> Path:
    """The firmware compiled with mpy-cross, once per test session."""
    global _compiled
    if _compiled is None:
        _compiled = compile_firmware(Path(tempfile.mkdtemp(prefix="uplink-mpy-")))
    return _compiled


class Mpy:
    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.lines: list[str] = []
        self._q: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    @property
    def output(self) -> str:
        self._drain(0)
        return "\n".join(self.lines)

    def _drain(self, timeout: float) -> str | None | bool:
        try:
            line = self._q.get(timeout=timeout) if timeout else self._q.get_nowait()
        except queue.Empty:
            return False
        if line is not None:
            self.lines.append(line)
        return line

    def expect(self, text: str, timeout: float = 10.0, start: int = 0) -> str:
        """The first line (from index `start`) containing text; waits for it up to timeout."""
        end = time.monotonic() + timeout
        seen = start
        while True:
            for line in self.lines[seen:]:
                if text in line:
                    return line
            seen = max(seen, len(self.lines))
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {text!r} from micropython within {timeout}s:\n{self.output}")
            line = self._drain(min(left, 0.2))
            if line is None and self.proc.poll() is not None and not any(text in x for x in self.lines[seen:]):
                raise AssertionError(f"micropython exited ({self.proc.returncode}) before {text!r}:\n{self.output}")

    def wait(self, timeout: float = 30.0) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"micropython still running after {timeout}s:\n{self.output}") from None
        while self._drain(1) not in (None, False):
            pass
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start(
    script: str | Path,
    *,
    env: dict | None = None,
    compiled: bool = False,
    heapsize: str | None = None,
    args: tuple = (),
) -> Mpy:
    """Start micropython on a script (a path, or source text written to a temp file)."""
    if isinstance(script, str) and not os.path.exists(script):
        fd, name = tempfile.mkstemp(suffix=".py", prefix="mpy-script-")
        with os.fdopen(fd, "w") as f:
            f.write(script)
        script = name
    fw = compiled_firmware() if compiled else FIRMWARE
    cmd = [micropython_bin()]
    if heapsize:  # an ESP32 budget: scaled when the 64-bit port stands in for the model
        cmd += ["-X", f"heapsize={port_heap(heapsize)}"]
    cmd += [str(script), *map(str, args)]
    proc = subprocess.Popen(
        cmd,
        env=micropython_env(fw, env),
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return Mpy(proc)
