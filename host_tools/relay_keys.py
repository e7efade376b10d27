"""Device keys of the token relay that rotate without a restart.

A device's key lives in the secret store as `relay-key.<device>` (host_tools/relay_pki.py).
`uplink relay rotate DEVICE` makes a new one and keeps the old one as
`relay-key-prev.<device>` ("<hex>@<unix time it stops working>") for a grace period, so the
device keeps working until it is provisioned with the new key. The key id is the first 8 hex
digits of the key's SHA-256: it names a key without telling anything about it, the device
sends it (`X-Uplink-Key-Id`, inside the signature) and the relay picks that key, not every
key it knows. A device without a key id (provisioned before key ids) is checked against the
current key, then the previous one while its grace lasts.

A running relay finds a rotated key when a signature does not verify with the keys it holds:
it reloads that device's keys (from Redis for replicas, then the secret store), at most once
per `RELOAD_FLOOR_S` per device, so a flood of bad signatures costs no more lookups than that.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass, field

from host_tools.relay_pki import KEY_PREFIX

PREV_PREFIX = "relay-key-prev."
KID_RE = re.compile(r"^[0-9a-f]{8}$")
RELOAD_FLOOR_S = 5.0


def key_id(key_hex: str) -> str:
    return hashlib.sha256(bytes.fromhex(key_hex)).hexdigest()[:8]


@dataclass(frozen=True)
class DeviceKey:
    key: str = field(repr=False)  # hex
    until: float | None = None  # None: the current key; else when it stops being accepted

    @property
    def kid(self) -> str:
        return key_id(self.key)

    def valid(self, now: float) -> bool:
        return self.until is None or now < self.until

    def encode(self) -> str:
        return self.key if self.until is None else f"{self.key}@{int(self.until)}"

    @classmethod
    def decode(cls, s: str) -> "DeviceKey":
        key, _, until = s.partition("@")
        bytes.fromhex(key)  # ValueError on a damaged value
        return cls(key, float(until) if until else None)


def _name(prefix: str, device: str) -> str:
    return prefix + re.sub(r"[^A-Za-z0-9_.-]", "_", device)


def load(store, device: str) -> list[DeviceKey]:
    """The device's current key, and the previous one while its grace lasts (secret store)."""
    out = []
    cur = store.get(_name(KEY_PREFIX, device))
    if cur:
        out.append(DeviceKey(cur))
    prev = store.get(_name(PREV_PREFIX, device))
    if prev:
        try:
            out.append(DeviceKey.decode(prev))
        except ValueError:
            pass  # a damaged previous key is no key: the current one still works
    return out


def rotate(store, device: str, grace_s: float, now: float | None = None) -> tuple[DeviceKey, DeviceKey | None]:
    """A new current key; the old one is accepted `grace_s` longer. Returns (new, previous)."""
    now = time.time() if now is None else now
    old = store.get(_name(KEY_PREFIX, device))
    new = DeviceKey(secrets.token_hex(32))
    prev = DeviceKey(old, now + grace_s) if old else None
    if prev is not None:
        store.set(_name(PREV_PREFIX, device), prev.encode())
    store.set(_name(KEY_PREFIX, device), new.key)
    return new, prev
