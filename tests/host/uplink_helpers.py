"""Helpers for the `uplink` command's tests: an isolated environment, a CLI runner, a
keyring that lives in memory."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from keyring.backend import KeyringBackend
from keyring.errors import KeyringError, PasswordDeleteError
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]


class MemKeyring(KeyringBackend):
    priority = 1  # type: ignore[assignment]

    def __init__(self):
        super().__init__()
        self.data: dict[tuple[str, str], str] = {}

    def get_password(self, service, username):
        return self.data.get((service, username))

    def set_password(self, service, username, password):
        self.data[(service, username)] = password

    def delete_password(self, service, username):
        if (service, username) not in self.data:
            raise PasswordDeleteError(username)
        del self.data[(service, username)]


class BrokenKeyring(KeyringBackend):
    """What a locked or absent Secret Service looks like from keyring."""

    priority = 1  # type: ignore[assignment]

    def get_password(self, service, username):
        raise KeyringError("org.freedesktop.DBus.Error.ServiceUnknown: no secret service")

    def set_password(self, service, username, password):
        raise KeyringError("org.freedesktop.DBus.Error.ServiceUnknown: no secret service")

    def delete_password(self, service, username):
        raise KeyringError("org.freedesktop.DBus.Error.ServiceUnknown: no secret service")


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class Env:
    """A fleet directory, a secrets file, a build dir; runs `uplink` in-process or as a process."""

    def __init__(self, root: Path, fleet_text: str = ""):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.fleet = root / "fleet.toml"
        if fleet_text:
            self.fleet.write_text(fleet_text)
        self.secrets_file = root / "home" / "secrets.json"
        self.build = root / "build"
        self.env = {
            "UPLINK_SECRETS_FILE": str(self.secrets_file),
            "UPLINK_NO_KEYRING": "1",
            "UPLINK_BUILD_DIR": str(self.build),
            "UPLINK_STATE_DIR": str(root / "state"),
            "UPLINK_FLEET": str(self.fleet),
            "COLUMNS": "200",
        }

    def write_fleet(self, text: str) -> None:
        self.fleet.write_text(text)

    def run(self, *args: str, input: str | None = None, env: dict | None = None) -> Result:
        from host_tools.cli import app

        r = CliRunner().invoke(app, list(args), input=input, env={**self.env, **(env or {})},
                               catch_exceptions=False)
        return Result(r.exit_code, r.stdout, r.stderr)

    def run_process(self, *args: str, input: str | None = None, env: dict | None = None,
                    timeout: float = 300) -> Result:
        e = {**os.environ, **self.env, **(env or {})}
        r = subprocess.run([sys.executable, "-m", "host_tools", *args], input=input, env=e,
                           capture_output=True, text=True, timeout=timeout, cwd=self.root)
        return Result(r.returncode, r.stdout, r.stderr)
