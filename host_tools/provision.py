"""Render a device's bundle: build/devices/DEVICE/{config.json, ca.der, relay_ca.der, board.json}.

config.json follows docs/config.md exactly (the firmware checks it at boot). Rendering is
deterministic: the same fleet file and secrets give byte-identical files. Files that hold a
secret are written 0600, every file is written atomically, and files a previous render left
that are no longer part of the bundle are removed.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from host_tools import fw_schema
from host_tools.errors import UplinkError
from host_tools.fleet import (
    SECRET_KEYS,
    Biotz,
    Device,
    Fleet,
    FleetError,
    StaticCredentials,
    ThingsBoard,
    Weightron,
)
from host_tools.fleet_schema import Strict, is_secret
from host_tools.private_dir import private_dir
from host_tools.secrets import PREFIX, SecretStore

BUNDLE_FILES = ("config.json", "ca.der", "relay_ca.der", "board.json", "client.der", "client_key.der")


class ProvisionError(UplinkError):
    pass


@dataclass
class Bundle:
    dir: Path
    files: dict[str, bytes] = field(default_factory=dict)
    secret_files: set[str] = field(default_factory=set)
    config: dict = field(default_factory=dict)


def bundle_dir(fleet: Fleet, device: str, out: Path | None = None) -> Path:
    return (out or fleet.base_dir / "build") / "devices" / device


def registered_token_name(device: str) -> str:
    """Where `provision --register` keeps the token ThingsBoard handed out."""
    return f"{device}.token"


def ca_to_der(data: bytes, source: str) -> bytes:
    """A CA certificate as DER (MicroPython's TLS loader takes DER), from PEM or DER."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
            cert = certs[0]
        else:
            cert = x509.load_der_x509_certificate(data)
    except ValueError as e:
        raise ProvisionError(f"{source}: not a PEM or DER certificate ({e})") from None
    return cert.public_bytes(Encoding.DER)


def _read_ca(fleet: Fleet, ref: str, where: str) -> bytes:
    path = fleet.resolve_path(ref)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ProvisionError(f"{where}: cannot read CA file {path} ({e.strerror})") from None
    return ca_to_der(data, str(path))


def _default_ca(p) -> Path | None:
    from host_tools import ca

    if p.insecure:
        return None
    url = p.device_url() if isinstance(p, Biotz) else p.effective_url()
    return ca.default_ca(p.kind, url)


def _resolver(store: SecretStore, redact: bool):
    if redact:  # show where a secret comes from, never its value
        return lambda value, context=None: value
    return store.resolve


def _derived(dev: Device, store: SecretStore, p) -> dict:
    """HOST-ONLY: platform values the fleet file does not hold as such but the host knows
    (key -> value; None leaves the key out)."""
    main = p == dev.platform  # (platforms[0] and platform are equal, not the same object)
    if isinstance(p, ThingsBoard):
        # the token `provision --register` got; a device with a token is not provisioned again
        token = p.token
        if token is None and main and store.get(registered_token_name(dev.name)) is not None:
            token = "secret:" + registered_token_name(dev.name)
        out = {"token": token}
        if token is not None:
            out.update(provision_key=None, provision_secret=None)
        return out
    if isinstance(p, Weightron):  # the relay's Application ID; topics name the device
        return {"application_id": p.application_id or (p.oidc.application_id if p.oidc else None),
                "device_id": p.device_id or dev.name}
    return {}


def _kind_keys(dev: Device, store: SecretStore, redact: bool = False, p=None) -> dict:
    """The platform's own keys, as the firmware declares them (fw_schema): every key the
    fleet file sets, secrets resolved, in the firmware's order. `p`: one of several clouds."""
    p = p or dev.platform
    r = _resolver(store, redact)
    ctx = f"device '{dev.name}'"
    secrets = SECRET_KEYS.get(p.kind, set())
    derived = _derived(dev, store, p)
    out: dict = {}
    for key in fw_schema.platform(p.kind):
        value = derived[key] if key in derived else getattr(p, key)
        if value is None:
            continue
        if key in secrets and isinstance(value, dict):
            value = {k: r(v, context=f"{ctx}: platform.{key}.{k}") for k, v in sorted(value.items())}
        elif key in secrets:
            value = r(value, context=f"{ctx}: platform.{key}")
        out[key] = value
    return out


def _credentials(fleet: Fleet, dev: Device, store: SecretStore, files: dict,
                 redact: bool = False, p=None) -> dict | None:
    c = (p or dev.platform).credentials
    if c is None:
        return None
    if isinstance(c, StaticCredentials):
        return {
            "source": "static",
            "username": c.username,
            "password": _resolver(store, redact)(
                c.password, context=f"device '{dev.name}': platform.credentials.password")
            if c.password else None,
        }
    # "relay": the device asks `uplink relay` for a fresh token before every connect
    relay = fleet.relay
    if relay is None or not relay.url:
        raise FleetError([f"device '{dev.name}': credentials = \"relay\" needs [relay] url"])
    if redact:
        return {"source": "relay", "url": relay.url, "ca": "relay_ca.der", "device_id": dev.name,
                "key": "<relay device key>", "min_life_s": relay.min_life_s}
    try:
        from host_tools import relay_pki
    except ImportError:
        raise ProvisionError(
            "this install has no token-relay support (host_tools/relay_pki.py is missing)"
        ) from None
    hosts = list(relay.hosts) or [relay.url.split("://", 1)[1].rsplit(":", 1)[0]]
    pki = relay_pki.ensure_relay_pki(fleet.state_dir, hosts)
    ca_der = Path(pki.ca_der).read_bytes()
    files["relay_ca.der"] = ca_der
    key = relay_pki.device_key(store, dev.name)
    store.remember(key)
    from host_tools.relay_keys import key_id

    return {
        "source": "relay",
        "url": relay.url,
        "ca": "relay_ca.der",
        "device_id": dev.name,
        "key": key,
        "key_id": key_id(key),  # signed with each request: the relay picks this key after a rotation
        "min_life_s": relay.min_life_s,
    }


def render(fleet: Fleet, name: str, store: SecretStore, *, redact: bool = False
           ) -> tuple[dict, dict[str, bytes]]:
    """(config dict, {file name: bytes}) for one device; nothing written. With `redact`,
    secrets stay "secret:NAME" references (and nothing is created for the relay)."""
    dev = fleet.device(name)
    files: dict[str, bytes] = {}
    # several clouds: one section each, CAs in ca.der, ca1.der, ... (docs/config.md)
    sections = [_platform(fleet, dev, q, i, store, files, redact)
                for i, q in enumerate(dev.platforms or [dev.platform])]
    ctx = f"device '{name}'"
    r = _resolver(store, redact)
    platform = {"platforms": sections} if dev.platforms else {"platform": sections[0]}
    config = _config(dev, platform, lambda v, where: r(v, context=f"{ctx}: {where}"))
    files["config.json"] = (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode()
    files["board.json"] = (json.dumps(dev.profile(), indent=2, sort_keys=True) + "\n").encode()
    return config, files


def _config(dev: Device, platform: dict, resolve) -> dict:
    """config.json: the sections of config.SCHEMA in its order, from the device's models
    (generated from that SCHEMA: fleet.py), `platform` as rendered."""
    out: dict = {}
    for section in fw_schema.config():
        if section == "platform":
            out.update(platform)
        elif section == "device":  # its keys sit at the top of the device's table
            keys = [k for k in fw_schema.config()["device"][0] if k != "name"]
            out["device"] = {"name": dev.name, **_keys(dev, keys, "", resolve)}
        else:
            out[section] = _value(getattr(dev, section), section, resolve)
    return out


def _keys(m: Strict, keys, where: str, resolve) -> dict:
    # None is left out: the board applies its default (health: the platform decides)
    out = {}
    for k in keys:
        v = _value(getattr(m, k), f"{where}.{k}" if where else k, resolve, is_secret(type(m), k))
        if v is not None:
            out[k] = v
    return out


def _value(v, where: str, resolve, secret: bool = False):
    if isinstance(v, Strict):  # a section
        return _keys(v, type(v).model_fields, where, resolve)
    if isinstance(v, list):
        return [_value(x, f"{where}[{i}]", resolve, secret) for i, x in enumerate(v)]
    if secret and isinstance(v, str) and v.startswith(PREFIX):  # not the firmware's "" default
        return resolve(v, where)
    return v


def _platform(fleet: Fleet, dev: Device, p, i: int, store: SecretStore, files: dict, redact: bool) -> dict:
    """One platform section of config.json (platforms[i] when the device has several)."""
    where = f"device '{dev.name}': " + (f"platforms[{i}]" if dev.platforms else "platform")
    ca_file = "ca.der" if i == 0 else f"ca{i}.der"
    if p.ca:
        files[ca_file] = _read_ca(fleet, p.ca, where + ".ca")
    else:
        shipped = _default_ca(p)
        if shipped is not None:  # the cloud's own public host: its documented root
            files[ca_file] = ca_to_der(shipped.read_bytes(), str(shipped))
    platform = {
        "kind": p.kind,
        "name": p.name,
        "url": p.effective_url(),
        "ca": ca_file if ca_file in files else None,
        "insecure": p.insecure,
        "keepalive": p.keepalive,
        "client_id": p.client_id,
        "credentials": _credentials(fleet, dev, store, files, redact, p),
    }
    platform.update(_kind_keys(dev, store, redact, p))
    if platform.get("client_cert"):
        _client_cert(fleet, platform, files, redact, where, "" if i == 0 else str(i))
    # null means "the default" in docs/config.md, but firmware/uplink/config.py rejects a
    # present key whose value is null: leave such keys out, which means the same to both
    return _drop_none(platform)


def _client_cert(fleet: Fleet, platform: dict, files: dict, redact: bool, where: str, n: str) -> None:
    """X.509 (host_tools.x509): the certificate file and the key secret as DER files."""
    from host_tools import x509

    cert, key = f"client{n}.der", f"client{n}_key.der"
    path = fleet.resolve_path(platform["client_cert"])
    try:
        files[cert] = x509.cert_to_der(path.read_bytes(), str(path))
        if not redact:
            files[key] = x509.key_to_der(platform["client_key"], where + ".client_key")
    except OSError as e:
        raise ProvisionError(f"{where}.client_cert: cannot read {path} ({e.strerror})") from None
    except x509.X509Error as e:
        raise ProvisionError(str(e)) from None
    platform.update(client_cert=cert, client_key=key)


def client_cert_problems(fleet: Fleet, dev: Device, store: SecretStore) -> list[str]:
    """For validate: each ThingsBoard section's client certificate and key, read, matched and
    within their validity (a key whose secret is not set is reported as missing elsewhere)."""
    from host_tools import x509

    out = []
    for i, p in enumerate(dev.platforms or [dev.platform]):
        if not isinstance(p, ThingsBoard) or not p.client_cert:  # type: ignore[attr-defined]
            continue
        where = f"{fleet.path.name}: device '{dev.name}': " + (f"platforms[{i}]" if dev.platforms else "platform")
        path = fleet.resolve_path(p.client_cert)  # type: ignore[attr-defined]
        try:
            cert = x509.cert_to_der(path.read_bytes(), str(path))
            ref = p.client_key  # type: ignore[attr-defined]
            if not ref or not ref.startswith(PREFIX) or store.get(ref[len(PREFIX):]) is None:
                if not ref:
                    out.append(f"{where}.client_key: missing: the private key of client_cert (a secret reference)")
                continue
            out += x509.problems(cert, x509.key_to_der(store.resolve(ref), where + ".client_key"), where)
        except OSError as e:
            out.append(f"{where}.client_cert: cannot read {path} ({e.strerror})")
        except x509.X509Error as e:
            out.append(str(e))
    return out


def _drop_none(d: dict) -> dict:
    return {k: (_drop_none(v) if isinstance(v, dict) else v) for k, v in d.items() if v is not None}


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Atomic write with the final mode set before the data lands (never briefly readable)."""
    private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    os.chmod(path, mode)


def provision(fleet: Fleet, name: str, store: SecretStore, out: Path | None = None) -> Bundle:
    config, files = render(fleet, name, store)
    target = private_dir(bundle_dir(fleet, name, out))  # config.json holds secrets
    # tokens, Wi-Fi passwords, the relay device key; X.509 private keys
    secret_files = {"config.json"} | {f for f in files if f.startswith("client") and f.endswith("_key.der")}
    for fname, data in sorted(files.items()):
        write_file(target / fname, data, 0o600 if fname in secret_files else 0o644)
    for stale in BUNDLE_FILES:
        if stale not in files and (target / stale).exists():
            (target / stale).unlink()
    for extra_ca in target.glob("ca[0-9]*.der"):  # a cloud no longer configured (platforms)
        if extra_ca.name not in files:
            extra_ca.unlink()
    return Bundle(dir=target, files=files, secret_files=secret_files, config=config)
