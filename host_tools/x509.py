"""X.509 client certificates for ThingsBoard (thingsboard.io/docs/user-guide/certificates/).

The fleet file names the device's certificate as a file (PEM or DER, relative to the fleet
file, like `ca`) and its private key as a secret reference (`client_key = "secret:NAME"`,
the key's PEM text or the base64 of its DER). provision renders both as DER, what
MicroPython's TLS loads: client.der and client_key.der (0600); validate checks that they
belong together and that the certificate is valid now.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import serialization as ser


class X509Error(ValueError):
    pass


def key_to_der(text: str, source: str) -> bytes:
    """A private key (PEM text, or the base64 of a DER key) as PKCS#8 DER."""
    try:
        if "-----BEGIN" in text:
            key = ser.load_pem_private_key(text.encode(), None)
        else:
            key = ser.load_der_private_key(base64.b64decode("".join(text.split()), validate=True), None)
    except (ValueError, TypeError, binascii.Error) as e:
        raise X509Error(f"{source}: not a private key in PEM or the base64 of DER ({e})") from None
    return key.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption())


def cert_to_der(data: bytes, source: str) -> bytes:
    try:
        cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except ValueError as e:
        raise X509Error(f"{source}: not a PEM or DER certificate ({e})") from None
    return cert.public_bytes(ser.Encoding.DER)


def problems(cert_der: bytes, key_der: bytes, where: str, now: dt.datetime | None = None) -> list[str]:
    """What keeps this certificate and key from logging in: a key that is not the
    certificate's, a certificate not yet or no longer valid."""
    cert = x509.load_der_x509_certificate(cert_der)
    key = ser.load_der_private_key(key_der, None)
    out = []
    pub = ser.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(ser.Encoding.DER, pub) != key.public_key().public_bytes(ser.Encoding.DER, pub):
        out.append(f"{where}: client_key is not the private key of client_cert (its public key differs)")
    now = now or dt.datetime.now(dt.timezone.utc)
    if now > cert.not_valid_after_utc:
        out.append(f"{where}: client_cert expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: "
                   "the broker will refuse it")
    elif now < cert.not_valid_before_utc:
        out.append(f"{where}: client_cert is valid only from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    return out
