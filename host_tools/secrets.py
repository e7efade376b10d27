"""Secrets: referenced in the fleet file as "secret:NAME", never written in it.

A value is looked up in this order:

1. the OS keyring (service "uplink"), when the machine has one;
2. the environment: ``UPLINK_SECRET_<NAME>`` (upper case, every non-alphanumeric -> "_");
3. a secrets file readable by its owner only (0600): ``$UPLINK_SECRETS_FILE`` or
   ``~/.config/uplink/secrets.json``.

Headless machines have no keyring (keyring's "fail" backend, or a Secret Service that is not
running): every keyring error is caught once, the keyring is then treated as absent, and
``set`` writes to the secrets file instead. Since a keyring cannot list what it holds, the
names stored there are remembered (names only, never values) in an index file next to the
secrets file.

This is the only module that imports ``keyring``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from host_tools.errors import ExitCode, UplinkError
from host_tools.private_dir import private_dir

SERVICE = "uplink"
PREFIX = "secret:"
ENV_PREFIX = "UPLINK_SECRET_"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class SecretError(UplinkError):
    """A secret problem a person can act on (the message says how)."""

    code = ExitCode.SECRET


class MissingSecret(SecretError):
    def __init__(self, name: str, where: str | None = None):
        self.name = name
        hint = (
            f"secret '{name}' is not set{' (' + where + ')' if where else ''}: "
            f"run `uplink secrets set {name}`, or export {env_name(name)}"
        )
        super().__init__(hint)


def env_name(name: str) -> str:
    return ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def is_ref(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def ref_name(value: str) -> str:
    return value[len(PREFIX):]


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise SecretError(
            f"'{name}' is not a valid secret name: use letters, digits, '_', '-' and '.' "
            "(start with a letter or digit, at most 100 characters)"
        )
    return name


def default_file() -> Path:
    env = os.environ.get("UPLINK_SECRETS_FILE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "uplink" / "secrets.json"


def _write_private(path: Path, data: dict) -> None:
    """Write JSON atomically, created 0600 from the start (never briefly world-readable)."""
    private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class SecretStore:
    """Look up, store and delete secrets; resolve "secret:NAME" references.

    `keyring_backend`: a keyring backend object to use instead of the OS default (tests);
    `use_keyring=False` skips the keyring altogether; `env`: the environment to read.
    """

    def __init__(
        self,
        file: Path | str | None = None,
        *,
        use_keyring: bool = True,
        keyring_backend=None,
        env: dict | None = None,
    ):
        self.file = Path(file) if file is not None else default_file()
        self.index_file = self.file.with_name(self.file.stem + ".keyring-index.json")
        self.env = os.environ if env is None else env
        self._backend = keyring_backend
        self._keyring_ok = use_keyring
        self.keyring_problem: str | None = None if use_keyring else "disabled"
        self._seen: dict[str, str] = {}  # every value handed out, for output redaction
        self._file_cache: tuple[tuple, dict[str, str]] | None = None

    # -- the keyring, behind guards -------------------------------------------------------
    def _kr(self):
        if not self._keyring_ok:
            return None
        if self._backend is None:
            try:
                import keyring
                from keyring.backends import fail

                backend = keyring.get_keyring()
                if isinstance(backend, fail.Keyring):
                    raise RuntimeError("no keyring backend on this machine")
                self._backend = backend
            except Exception as e:  # noqa: BLE001 - any backend failure means "no keyring"
                self._disable(e)
                return None
        return self._backend

    def _disable(self, e: Exception) -> None:
        self._keyring_ok = False
        self.keyring_problem = f"{type(e).__name__}: {e}".splitlines()[0][:200]

    @property
    def keyring_available(self) -> bool:
        return self._kr() is not None

    def _kr_get(self, name: str) -> str | None:
        kr = self._kr()
        if kr is None:
            return None
        try:
            return kr.get_password(SERVICE, name)
        except Exception as e:  # noqa: BLE001
            self._disable(e)
            return None

    # -- the file -------------------------------------------------------------------------
    def _read_json(self, path: Path, *, private: bool) -> dict:
        try:
            st = path.stat()
        except FileNotFoundError:
            return {}
        if private and st.st_mode & 0o077:
            raise SecretError(
                f"{path} is readable by other users (mode {st.st_mode & 0o777:o}): "
                f"run `chmod 600 {path}` and check who has seen it"
            )
        try:
            data = json.loads(path.read_text() or "{}")
        except ValueError as e:
            raise SecretError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
        if not isinstance(data, dict):
            raise SecretError(f"{path}: expected a JSON object of name -> value")
        return data

    def _file_view(self) -> dict[str, str]:
        """The secrets file, parsed again only when it changed (a relay for 10,000 devices
        looks up ~40,000 names at start). Not to be modified: `_file_data` is a copy."""
        try:
            st = self.file.stat()
            sig = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_mode)
        except FileNotFoundError:
            sig = None
        if sig is None or self._file_cache is None or self._file_cache[0] != sig:
            data = {str(k): str(v) for k, v in self._read_json(self.file, private=True).items()}
            self._file_cache = (sig, data) if sig is not None else None
            return data
        return self._file_cache[1]

    def _file_data(self) -> dict[str, str]:
        return dict(self._file_view())

    def _index(self) -> list[str]:
        data = self._read_json(self.index_file, private=False)
        names = data.get("names", [])
        return [str(n) for n in names] if isinstance(names, list) else []

    def _set_index(self, names: set[str]) -> None:
        _write_private(self.index_file, {"names": sorted(names)})

    # -- public API -----------------------------------------------------------------------
    def where(self, name: str) -> str | None:
        """'keyring', 'env' or 'file': where `get(name)` finds the value; None if nowhere."""
        if self._kr_get(name) is not None:
            return "keyring"
        if self.env.get(env_name(name)):  # an empty variable counts as unset
            return "env"
        if name in self._file_view():
            return "file"
        return None

    def get(self, name: str) -> str | None:
        value = self._kr_get(name)
        if value is None:
            value = self.env.get(env_name(name)) or None
        if value is None:
            value = self._file_view().get(name)
        if value is not None:
            self._seen[name] = value
        return value

    def set(self, name: str, value: str, *, backend: str | None = None) -> str:
        """Store a secret; returns where it went ('keyring' or 'file').

        backend: None (keyring if there is one, else the file), 'keyring' or 'file'.
        """
        check_name(name)
        if backend not in (None, "keyring", "file"):
            raise SecretError(f"unknown secret backend '{backend}' (keyring or file)")
        self._seen[name] = value
        if backend != "file":
            kr = self._kr()
            if kr is not None:
                try:
                    kr.set_password(SERVICE, name, value)
                except Exception as e:  # noqa: BLE001
                    self._disable(e)
                else:
                    self._set_index(set(self._index()) | {name})
                    # one place per name: a stale copy in the file would shadow nothing but
                    # would still sit on disk
                    data = self._file_data()
                    if data.pop(name, None) is not None:
                        _write_private(self.file, data)
                    return "keyring"
            if backend == "keyring":
                raise SecretError(
                    f"no usable keyring ({self.keyring_problem}); use --file to keep the "
                    f"secret in {self.file} (0600)"
                )
        data = self._file_data()
        data[name] = value
        _write_private(self.file, data)
        return "file"

    def delete(self, name: str) -> list[str]:
        """Remove a secret from the keyring and the file; returns where it was removed from."""
        removed = []
        kr = self._kr()
        if kr is not None:
            try:
                if kr.get_password(SERVICE, name) is not None:
                    kr.delete_password(SERVICE, name)
                    removed.append("keyring")
            except Exception as e:  # noqa: BLE001
                self._disable(e)
        index = set(self._index())
        if name in index:
            index.discard(name)
            self._set_index(index)
        data = self._file_data()
        if name in data:
            del data[name]
            _write_private(self.file, data)
            removed.append("file")
        return removed

    def names(self) -> list[str]:
        """Every secret name known: keyring (by index), environment, file. Never values."""
        found = set(self._file_data())
        if self._kr() is not None:
            found |= {n for n in self._index() if self._kr_get(n) is not None}
        env_names = {k[len(ENV_PREFIX):].lower() for k in self.env if k.startswith(ENV_PREFIX)}
        found |= env_names
        return sorted(found)

    def resolve(self, value, *, context: str | None = None):
        """'secret:NAME' -> the secret's value (MissingSecret naming it if unset); other values
        pass through unchanged."""
        if not is_ref(value):
            return value
        name = ref_name(value)
        got = self.get(name)
        if got is None:
            raise MissingSecret(name, context)
        return got

    def resolve_tree(self, obj, *, context: str = ""):
        """A copy of a JSON-like tree with every "secret:NAME" string resolved."""
        if isinstance(obj, dict):
            return {k: self.resolve_tree(v, context=f"{context}.{k}" if context else k)
                    for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.resolve_tree(v, context=f"{context}[{i}]") for i, v in enumerate(obj)]
        return self.resolve(obj, context=f"used by {context}" if context else None)

    def remember(self, value: str) -> None:
        """Count a secret made elsewhere (e.g. the relay device key) for output redaction."""
        if value:
            self._seen["\0" + str(len(self._seen))] = value

    def seen_values(self) -> list[str]:
        """Every secret value this store handed out or stored (for output redaction)."""
        return [v for v in self._seen.values() if v]


def redact_tree(obj, secret_paths: set[str] | None = None, path: str = ""):
    """A copy with every "secret:NAME" string kept as the reference (already redacted) —
    helper for showing fleet settings: references are safe to show, values are not."""
    if isinstance(obj, dict):
        return {k: redact_tree(v, secret_paths, f"{path}.{k}" if path else k) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact_tree(v, secret_paths, f"{path}[{i}]") for i, v in enumerate(obj)]
    if secret_paths is not None and path in secret_paths and obj is not None:
        return "<redacted>"
    return obj
