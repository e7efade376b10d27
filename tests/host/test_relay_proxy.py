"""PROXY protocol v2 in front of the relay's TLS: a real haproxy (send-proxy-v2) on loopback.
The audit log and the per-address cap see the device's address, not the balancer's; only a
trusted address may send the header, and it must."""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl

import httpx
import pytest

from host_tools import oidc, relay_proxy
from host_tools.relay import PATH, Relay, RelayDevice, RelaySettings, sign_headers
from tests.oidc_provider import WEIGHTRON_API_KEY, WEIGHTRON_CLIENT
from tests.relay_services import HAProxy, need_haproxy

KEY = secrets.token_hex(32)


def test_header_round_trip_and_refusals():
    v4 = relay_proxy.build(("192.0.2.7", 40000), ("10.0.0.1", 8443))
    assert relay_proxy.needed(v4[:10]) == 0 and relay_proxy.needed(v4) == len(v4) == 28
    assert relay_proxy.parse(v4) == ("192.0.2.7", 40000)
    v6 = relay_proxy.build(("2001:db8::5", 1234), ("2001:db8::1", 8443))
    assert relay_proxy.parse(v6) == ("2001:db8::5", 1234)
    local = relay_proxy.SIGNATURE + bytes([0x20, 0x00, 0, 0])  # haproxy's own health check
    assert relay_proxy.parse(local) is None
    for bad in (b"\x16\x03\x01\x02\x00", b"PROXY TCP4 1.2.3.4 ", relay_proxy.SIGNATURE + bytes([0x11, 0x11, 0, 12])):
        with pytest.raises(relay_proxy.ProxyHeaderError):
            relay_proxy.needed(bad + bytes(16))
    trusted = relay_proxy.Trusted(["127.0.0.1", "10.1.0.0/16"])
    assert "127.0.0.1" in trusted and "10.1.200.3" in trusted and "127.0.0.2" not in trusted


class Setup:
    def __init__(self, provider, pki, tmp_path, **settings):
        need_haproxy()
        self.src = oidc.WeightronSource(oidc.ClientCredentialsSettings(
            provider.token_url, *WEIGHTRON_CLIENT, api_key=WEIGHTRON_API_KEY,
            access_url=provider.access_url, ca=provider.ca_pem))
        s = RelaySettings(pki.cert_pem, pki.key_pem, host="127.0.0.1", port=0,
                          trusted_proxies=("127.0.0.1",), **settings)
        self.relay = Relay(s, [RelayDevice("wt-1", KEY, self.src)])
        self.tmp = tmp_path
        self.ctx = ssl.create_default_context(cafile=str(pki.ca_pem))

    async def __aenter__(self):
        port = await self.relay.start()
        self.haproxy = HAProxy(self.tmp / "haproxy", {"relay": [port]}, source="127.0.0.1").start()
        self.port = self.haproxy.ports["relay"]
        return self

    async def __aexit__(self, *exc):
        self.haproxy.stop()
        await self.relay.stop()
        await self.src.aclose()

    async def get(self, local: str, port: int | None = None):
        t = httpx.AsyncHTTPTransport(verify=self.ctx, local_address=local, retries=0)
        async with httpx.AsyncClient(transport=t, timeout=10) as c:
            return await c.get(f"https://localhost:{port or self.port}{PATH}", headers=sign_headers("wt-1", KEY))

    async def hold(self, local: str):
        """A TLS connection through the balancer, handshake done, no request."""
        return await asyncio.open_connection("127.0.0.1", self.port, local_addr=(local, 0), ssl=self.ctx,
                                             server_hostname="localhost")


def test_audit_log_sees_the_device_address_behind_haproxy(provider, pki, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="uplink.relay.audit")

    async def go():
        async with Setup(provider, pki, tmp_path) as s:
            return (await s.get("127.0.0.3")).status_code

    assert asyncio.run(go()) == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "uplink.relay.audit"]
    assert len(lines) == 1 and "peer=127.0.0.3 " in lines[0]  # not haproxy's 127.0.0.1


def test_per_address_cap_counts_the_device_not_the_balancer(provider, pki, tmp_path):
    async def go():
        async with Setup(provider, pki, tmp_path, max_per_address=2) as s:
            held = [await s.hold("127.0.0.3") for _ in range(2)]
            try:
                with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
                    await s.get("127.0.0.3")  # a third from the same device address: refused
                other = await s.get("127.0.0.4")  # the balancer's address is not what is capped
            finally:
                for _, w in held:
                    w.transport.abort()
            return other.status_code

    assert asyncio.run(go()) == 200


def test_only_trusted_addresses_may_and_must_send_the_header(provider, pki, tmp_path):
    async def go():
        async with Setup(provider, pki, tmp_path) as s:
            relay_port = s.relay.port
            # an untrusted client claiming another address: its header is TLS garbage
            r, w = await asyncio.open_connection("127.0.0.1", relay_port, local_addr=("127.0.0.5", 0))
            w.write(relay_proxy.build(("10.9.9.9", 1), ("127.0.0.1", relay_port)))
            await w.drain()
            with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, OSError)):
                await w.start_tls(s.ctx, server_hostname="localhost")
                await asyncio.wait_for(r.read(1), 5)
                raise ConnectionError("served")  # (start_tls passing would be the bug)
            w.transport.abort()
            # the trusted address (haproxy's) without a header: closed, never served
            with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
                await s.get("127.0.0.1", port=relay_port)
            ok = await s.get("127.0.0.6")
            return ok.status_code, s.relay.gate.counts["bad_proxy"] + s.relay.gate.totals["bad_proxy"]

    status, bad = asyncio.run(go())
    assert status == 200 and bad == 1
