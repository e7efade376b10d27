"""PROXY protocol v2 (haproxy's `send-proxy-v2`): the client's address, as a TCP balancer saw
it, in a binary header before the first byte of the connection's own stream (here: before the
TLS handshake). Spec: https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt (section 2.2).

Only a connection from a trusted balancer address may (and must) start with one: from anyone
else the same bytes are not read, so a device cannot claim another's address.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
HEADER_LEN = 16  # signature, version/command, family/protocol, length
MAX_LEN = 16 + 512  # addresses (36 at most) and TLVs; anything longer is not a balancer's


class ProxyHeaderError(ValueError):
    """Not a PROXY v2 header a trusted balancer would send (the message says what is wrong)."""


def needed(buf: bytes) -> int:
    """How many bytes the header takes in all, once its first 16 are in (0 before)."""
    if len(buf) < HEADER_LEN:
        if not SIGNATURE.startswith(bytes(buf[:12])):
            raise ProxyHeaderError("no PROXY v2 signature")
        return 0
    if bytes(buf[:12]) != SIGNATURE:
        raise ProxyHeaderError("no PROXY v2 signature")
    if buf[12] >> 4 != 2:
        raise ProxyHeaderError(f"PROXY version {buf[12] >> 4}, not 2")
    total = HEADER_LEN + struct.unpack("!H", bytes(buf[14:16]))[0]
    if total > MAX_LEN:
        raise ProxyHeaderError(f"PROXY header of {total} bytes")
    return total


def parse(header: bytes) -> tuple[str, int] | None:
    """The source (address, port) of a complete header; None for LOCAL (the balancer's own
    health check) or an address family the relay does not serve (then its peer address holds)."""
    cmd, fam = header[12] & 0x0F, header[13]
    if cmd == 0x0:
        return None
    if cmd != 0x1:
        raise ProxyHeaderError(f"PROXY command {cmd}")
    body = header[HEADER_LEN:]
    if fam == 0x11:  # TCP over IPv4
        if len(body) < 12:
            raise ProxyHeaderError("short IPv4 addresses")
        return socket.inet_ntop(socket.AF_INET, body[:4]), struct.unpack("!H", body[8:10])[0]
    if fam == 0x21:  # TCP over IPv6
        if len(body) < 36:
            raise ProxyHeaderError("short IPv6 addresses")
        return socket.inet_ntop(socket.AF_INET6, body[:16]), struct.unpack("!H", body[32:34])[0]
    return None


def build(src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    """A PROXY v2 header (TCP), as haproxy sends it: for tests and the bench."""
    v6 = ":" in src[0]
    af = socket.AF_INET6 if v6 else socket.AF_INET
    body = (socket.inet_pton(af, src[0]) + socket.inet_pton(af, dst[0])
            + struct.pack("!HH", src[1], dst[1]))
    return SIGNATURE + bytes([0x21, 0x21 if v6 else 0x11]) + struct.pack("!H", len(body)) + body


class Trusted:
    """The balancer addresses (or networks) whose PROXY header is believed."""

    def __init__(self, items: list[str] | tuple[str, ...] = ()):
        self.nets = [ipaddress.ip_network(x, strict=False) for x in items]

    def __bool__(self) -> bool:
        return bool(self.nets)

    def __contains__(self, addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in n for n in self.nets)
