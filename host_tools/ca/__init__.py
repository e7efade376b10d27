"""The public root CA each cloud's own endpoints chain to, shipped so that a fleet entry with
the documented URL and no `ca` works as written (README.md beside this file says which root,
for which host, and where the platform documents it).

A default applies only to the cloud's own public hosts: a self-hosted ThingsBoard or a
private broker has its own CA, which the fleet file must name.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent

ISRG_ROOT_X1 = HERE / "isrg-root-x1.pem"

# kind -> (public host names, or ".suffix" for a whole domain), the root their chains end in
DEFAULTS: dict[str, tuple[tuple[str, ...], Path]] = {
    "thingsboard": (("mqtt.thingsboard.cloud", "mqtt.eu.thingsboard.cloud"), ISRG_ROOT_X1),
    "blynk": (("blynk.cloud", ".blynk.cloud"), ISRG_ROOT_X1),
    "weightron": (("mqtt.weightron.cloud",), ISRG_ROOT_X1),
    "biotz": (("broker.biotz.io", "ingestion-http.biotz.io"), ISRG_ROOT_X1),
}

TLS_SCHEMES = ("mqtts", "wss", "https")


def needs_tls(url: str) -> bool:
    return urlsplit(url).scheme in TLS_SCHEMES


def default_ca(kind: str, url: str) -> Path | None:
    """The shipped root for `url` on cloud `kind`, or None (not one of the cloud's hosts)."""
    entry = DEFAULTS.get(kind)
    if entry is None or not needs_tls(url):
        return None
    host = (urlsplit(url).hostname or "").lower()
    for h in entry[0]:
        if host == h or (h.startswith(".") and host.endswith(h)):
            return entry[1]
    return None
