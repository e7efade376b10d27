"""Run the firmware on the host board from a test: a state dir with config.json (and an
optional user.py), the process, and its console lines."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

from host_tools import hostboard
from tests.mpy_plugin import port_heap


class HostBoard:
    # 128k, an ESP32's budget (what the port's GC heap reaches without PSRAM), on the ESP32
    # model; the heaviest paths (a TLS relay fetch before a WSS connect, ThingsBoard
    # provisioning with its own client) fit in it. Without the model, the 64-bit port gets
    # 1.5x (tests/mpy_plugin.port_heap). make bench prints the smallest heap per transport.
    #
    # A config whose device.board is an ESP32 board (boards/) runs in that chip's memory on the
    # ESP32 model (-X chip: the GC heap grows into the IDF heap that mbedTLS takes from; the
    # heapsize is not used), the host board standing in for the board as in `uplink sim`.
    def __init__(self, state: Path, config: dict, *, user_py: str | None = None, compiled: bool = True,
                 heapsize: str | None = "128k", files: dict | None = None, firmware: Path | None = None):
        self.state = state
        state.mkdir(parents=True, exist_ok=True)
        self.chip = hostboard.model_chip(config.get("device", {}).get("board", "host"))
        # device.romfs: the board's image has a ROMFS partition, and the firmware runs from it
        self.romfs = state.with_name(state.name + ".romfs") if config.get("device", {}).get("romfs") else None
        if self.chip:
            config = {**config, "device": {**config["device"], "board": "host"}}
        (state / "config.json").write_text(json.dumps(config))
        if user_py is not None:
            (state / "user.py").write_text(user_py)
        for name, data in (files or {}).items():
            (state / name).write_bytes(data)
        self.compiled = compiled
        self.heapsize = heapsize
        self.proc: subprocess.Popen | None = None
        self._fw = firmware  # the flash it boots (with ROMFS: beside the partition, romfs_flash)
        self.lines: list[str] = []

    def start(self) -> "HostBoard":
        heap = port_heap(self.heapsize) if self.heapsize else None
        if self.romfs and self._fw is None:  # flashed once, as by a deploy: it outlives resets
            self._fw = hostboard.romfs_flash(hostboard.firmware_dir(self.compiled), self.romfs)
        fw = self._fw
        self.proc = hostboard.start(self.state, compiled=self.compiled, heapsize=heap, chip=self.chip,
                                    firmware=fw, romfs=self.romfs)
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()
        return self

    def _ended(self) -> bool:
        """The process has exited, and every line it printed has been read (the reader thread
        can lag behind the exit: a loaded machine showed an empty console after a clean exit)."""
        if not self.proc or self.proc.poll() is None:
            return False
        self._reader.join(5)
        return True

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
            if self._ended() and not any(text in ln for ln in self.lines):
                break
            time.sleep(0.05)
        raise AssertionError(f"no console line containing {text!r}; console:\n" + self.console())

    def console(self) -> str:
        self._ended()
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
