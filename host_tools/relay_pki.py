"""The token relay's own small PKI and the per-device relay keys.

`ensure_relay_pki(state_dir, hosts)` creates, once, a CA (10 years) and a server certificate
for the relay signed by it, whose SANs are `hosts` (names and IP addresses the boards use to
reach the relay). Later calls reuse both; if `hosts` gained a name the server certificate is
re-issued from the same CA, so boards already holding the CA keep trusting the relay.
Boards get the CA as DER (`ca_der`), which is what MicroPython's TLS loader takes.

`device_key(store, device)` returns the device's relay key (64 hex digits = 256 bits), made
once and kept in the secret store as `relay-key.<device>`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from host_tools.private_dir import private_dir

CA_DAYS = 3650
CERT_DAYS = 825


@dataclass(frozen=True)
class RelayPki:
    dir: Path
    ca_pem: Path
    ca_der: Path
    ca_key: Path
    cert_pem: Path
    key_pem: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_private(path: Path, data: bytes) -> None:
    # created 0600 from the start: never a moment where the key is world-readable
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    # readable by all, writable by the owner only, whatever the umask: the CA certificate goes
    # into every device bundle, so nobody else may swap it
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _key_bytes(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(hosts: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for h in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            out.append(x509.DNSName(h))
    return out


def _covers(cert: x509.Certificate, hosts: list[str]) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have = {str(v) for v in san.get_values_for_type(x509.DNSName)}
    have |= {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    want = {str(ipaddress.ip_address(h)) if _is_ip(h) else h for h in hosts}
    soon = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=30)
    return want <= have and cert.not_valid_after_utc > soon


def _is_ip(h: str) -> bool:
    try:
        ipaddress.ip_address(h)
        return True
    except ValueError:
        return False


def ensure_relay_pki(state_dir: Path, hosts: list[str]) -> RelayPki:
    """Create the relay CA and server certificate under `state_dir/relay-pki` once; reuse."""
    if not hosts:
        raise ValueError("the relay certificate needs at least one host name or IP address")
    private_dir(state_dir)  # the state folder holds more than the relay's keys
    d = private_dir(Path(state_dir) / "relay-pki")
    pki = RelayPki(d, d / "ca.pem", d / "ca.der", d / "ca.key", d / "relay.pem", d / "relay.key")
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)

    if pki.ca_pem.exists() and pki.ca_key.exists():
        ca = x509.load_pem_x509_certificate(pki.ca_pem.read_bytes())
        ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (
            x509.CertificateBuilder()
            .subject_name(_name("Uplink token relay CA"))
            .issuer_name(_name("Uplink token relay CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(pki.ca_key, _key_bytes(ca_key))
        _write_public(pki.ca_pem, ca.public_bytes(serialization.Encoding.PEM))
        for stale in (pki.cert_pem, pki.key_pem):  # a new CA invalidates the old leaf
            stale.unlink(missing_ok=True)
    if not pki.ca_der.exists():
        _write_public(pki.ca_der, ca.public_bytes(serialization.Encoding.DER))

    cert = None
    if pki.cert_pem.exists() and pki.key_pem.exists():
        cert = x509.load_pem_x509_certificate(pki.cert_pem.read_bytes())
        if cert.issuer != ca.subject or not _covers(cert, hosts):
            cert = None
    if cert is None:
        key = ec.generate_private_key(ec.SECP256R1())
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(hosts[0]))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName(_san(hosts)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(pki.key_pem, _key_bytes(key))
        _write_public(pki.cert_pem, cert.public_bytes(serialization.Encoding.PEM))
    for p in (pki.ca_key, pki.key_pem):
        os.chmod(p, 0o600)
    return pki


KEY_PREFIX = "relay-key."  # the secret store allows [A-Za-z0-9_.-] in names


def device_key(store, device_name: str) -> str:
    """The device's relay key (hex), created once and kept in the secret store."""
    name = KEY_PREFIX + re.sub(r"[^A-Za-z0-9_.-]", "_", device_name)
    key = store.get(name)
    if not key:
        key = secrets.token_hex(32)
        store.set(name, key)
    return key


STATE_KEY = "relay-state-key"


def state_key(store) -> bytes:
    """The key the replicas encrypt their shared token cache with (created once; every replica
    reads the same secret store or the same UPLINK_SECRET_ environment)."""
    key = store.get(STATE_KEY)
    if not key:
        key = secrets.token_hex(32)
        store.set(STATE_KEY, key)
    return bytes.fromhex(key)
