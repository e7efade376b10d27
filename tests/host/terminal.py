"""A real terminal for the `uplink` command's tests: a tmux server of its own runs one
command in a pty (so stdout and stderr are TTYs, as for a person at a shell), records every
byte the command writes (pipe-pane) and can type keys into it (Ctrl-C)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest


class Terminal:
    def __init__(self, root: Path, width: int = 120, height: int = 40):
        if shutil.which("tmux") is None:
            pytest.skip("tmux is not installed")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.sock = str(self.root / "tmux.sock")
        self.log = self.root / "pane.log"
        self.rc_file = self.root / "rc"
        self.size = (width, height)

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", self.sock, *args], check=True, capture_output=True,
                              text=True, timeout=30).stdout

    def start(self, args: list[str], env: dict[str, str], cwd: Path, module: str = "host_tools") -> "Terminal":
        """Run `python -m MODULE ARGS` in the terminal; returns once it has started."""
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
        cmd = shlex.join([sys.executable, "-m", module, *args])
        script = self.root / "run.sh"
        # the command starts only once the recording is on (wait-for go); a Ctrl-C typed into
        # the terminal reaches the command, and the script (trap) goes on to note its exit code
        script.write_text(
            f"trap : INT\ncd {shlex.quote(str(cwd))}\n{exports}"
            f"tmux -S {shlex.quote(self.sock)} wait-for go\n{cmd}\n"
            f"echo $? > {shlex.quote(str(self.rc_file))}\n")
        w, h = self.size
        self.tmux("-f", "/dev/null", "new-session", "-d", "-s", "t", "-x", str(w), "-y", str(h),
                  "bash", "--noprofile", "--norc", str(script))
        self.tmux("set-option", "-w", "-t", "t", "remain-on-exit", "on")
        self.tmux("pipe-pane", "-t", "t", "-o", f"cat >> {shlex.quote(str(self.log))}")
        self.tmux("wait-for", "-S", "go")
        return self

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "t", *keys)

    def wait(self, timeout: float) -> int | None:
        """The command's exit code, or None if it has not ended within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.rc_file.exists() and self.rc_file.read_text().strip():
                return int(self.rc_file.read_text())
            time.sleep(0.1)
        return None

    def wait_for_output(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return True
            time.sleep(0.1)
        return False

    def output(self) -> str:
        """Everything the command wrote to the terminal, escape sequences included."""
        return self.log.read_bytes().decode(errors="replace") if self.log.exists() else ""

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "t")

    def close(self) -> None:
        try:
            self.tmux("kill-server")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            pass
        if os.path.exists(self.sock):
            os.unlink(self.sock)
