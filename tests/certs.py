"""Throwaway PKI for tests: a CA and a server certificate for localhost / 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class Pki:
    dir: Path
    ca_pem: Path
    ca_der: Path
    cert_pem: Path
    key_pem: Path
    ca_key: Path | None = None  # for client_cert()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def make_pki(directory: Path, *, ca_name: str = "Uplink Test CA", hosts=("localhost", "127.0.0.1")) -> Pki:
    """A CA plus a server certificate whose SAN lists `hosts` (names or IP addresses)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(ca_name))
        .issuer_name(_name(ca_name))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(
        directory,
        directory / "ca.pem",
        directory / "ca.der",
        directory / "server.pem",
        directory / "server.key",
    )
    pki.ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.ca_der.write_bytes(ca.public_bytes(serialization.Encoding.DER))
    pki.cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, pki.key_pem)
    pki.ca_key = directory / "ca.key"
    _write_key(ca_key, pki.ca_key)
    return pki


@dataclass
class ClientCert:
    cert_pem: Path
    key_pem: Path
    cert_der: Path
    key_der: Path


def client_cert(pki: Pki, directory: Path, cn: str = "device-1", *, days: float = 30,
                expired: bool = False) -> ClientCert:
    """A client certificate signed by `pki`'s CA (expired: valid until an hour ago), as PEM
    and as DER (certificate; key as PKCS#8), what a board loads."""
    assert pki.ca_key is not None
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    ca = x509.load_pem_x509_certificate(pki.ca_pem.read_bytes())
    now = dt.datetime.now(dt.timezone.utc)
    start, end = (now - dt.timedelta(days=2), now - dt.timedelta(hours=1)) if expired else \
        (now - dt.timedelta(hours=1), now + dt.timedelta(days=days))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    out = ClientCert(directory / f"{cn}.pem", directory / f"{cn}.key", directory / f"{cn}.der",
                     directory / f"{cn}.key.der")
    out.cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out.cert_der.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    _write_key(key, out.key_pem)
    out.key_der.write_bytes(key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    out.key_der.chmod(0o600)
    return out
