"""Run the firmware on the host board from a test: a state dir with config.json (and an
optional user.py), the process, and its console lines."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

from host_tools import hostboard


class HostBoard:
    # 160k: the heaviest paths (TLS relay fetch before a WSS connect, ThingsBoard provisioning
    # with its own client) fit on the 64-bit host board, where objects take about twice an
    # ESP32's room; make bench prints the smallest heap per transport. A leak fails here.
    def __init__(self, state: Path, config: dict, *, user_py: str | None = None, compiled: bool = True,
                 heapsize: str | None = "160k", files: dict | None = None):
        self.state = state
        state.mkdir(parents=True, exist_ok=True)
        (state / "config.json").write_text(json.dumps(config))
        if user_py is not None:
            (state / "user.py").write_text(user_py)
        for name, data in (files or {}).items():
            (state / name).write_bytes(data)
        self.compiled = compiled
        self.heapsize = heapsize
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []

    def start(self) -> "HostBoard":
        self.proc = hostboard.start(self.state, compiled=self.compiled, heapsize=self.heapsize)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        return self

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, b""):
            self.lines.append(line.decode(errors="replace").rstrip())

    def wait_for_line(self, text: str, timeout: float = 20) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in list(self.lines):
                if text in line:
                    return line
            if self.proc and self.proc.poll() is not None and not any(text in ln for ln in self.lines):
                break
            time.sleep(0.05)
        raise AssertionError(f"no console line containing {text!r}; console:\n" + self.console())

    def console(self) -> str:
        return "\n".join(self.lines[-200:])

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
