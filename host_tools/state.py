"""One `uplink` run's global options (--fleet, --secrets-file, --no-keyring) and what follows
from them: the fleet file, the secret store, the project. Every command, tokens_cli's too,
takes them from here, so every secret store is registered with the redactor."""

from __future__ import annotations

import os
from pathlib import Path

from host_tools.secrets import SecretStore
from host_tools.ui import REDACT, UI


class State:
    fleet_path: Path = Path("fleet.toml")
    secrets_file: Path | None = None
    no_keyring: bool = False
    _store: SecretStore | None = None

    def configure(self, fleet: Path, secrets_file: Path | None, no_keyring: bool) -> None:
        """A run's options; the secret store is opened again from them when first needed."""
        self.fleet_path = fleet
        self.secrets_file = secrets_file
        self.no_keyring = no_keyring
        self._store = None

    @property
    def store(self) -> SecretStore:
        if self._store is None:
            self._store = SecretStore(self.secrets_file, use_keyring=not self.no_keyring)
            REDACT.sources.append(self._store.seen_values)
            if not self._store.keyring_available:
                UI.detail(f"no OS keyring ({self._store.keyring_problem}); secrets come from "
                          f"the environment and {self._store.file}")
        return self._store

    def fleet(self):
        from host_tools.fleet import load_fleet

        return load_fleet(self.fleet_path)

    @property
    def project(self) -> Path:
        """The user's project: the directory of the fleet file (host_tools/project.py)."""
        return self.fleet_path.resolve().parent

    def sources(self):
        from host_tools.project import sources

        return sources(self.project)

    @property
    def build_root(self) -> Path:
        env = os.environ.get("UPLINK_BUILD_DIR")
        return Path(env) if env else self.fleet_path.resolve().parent / "build"


S = State()
