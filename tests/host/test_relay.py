"""host_tools.relay over real HTTPS on loopback, in front of the real test OIDC provider."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import ssl
import time
from pathlib import Path

import httpx
import pytest

from host_tools import oidc, relay_pki
from host_tools.relay import PATH, Relay, RelayDevice, RelaySettings, sign_headers
from tests.oidc_provider import (
    BIOTZ_CLIENT,
    BIOTZ_USER,
    WEIGHTRON_API_KEY,
    WEIGHTRON_CLIENT,
)

KEY = secrets.token_hex(32)
BZ_KEY = secrets.token_hex(32)


@pytest.fixture(autouse=True)
def _reset(provider):
    provider.reset_counters()
    provider.lifetime = 300
    provider.delay_s = 0


class Clock:
    def __init__(self):
        self.offset = 0.0

    def __call__(self):
        return time.time() + self.offset


class Harness:
    """Relay + token sources + an HTTPS client trusting only the relay CA, in one loop."""

    def __init__(self, provider, pki, *, clock=None, **settings):
        self.provider = provider
        self.clock = clock or time.time
        self.wt = oidc.WeightronSource(oidc.ClientCredentialsSettings(
            provider.token_url, *WEIGHTRON_CLIENT, api_key=WEIGHTRON_API_KEY,
            access_url=provider.access_url, ca=provider.ca_pem), clock=self.clock)
        self.bz = oidc.BiotzSource(oidc.PasswordSettings(
            provider.token_url, BIOTZ_CLIENT, *BIOTZ_USER, ca=provider.ca_pem), clock=self.clock)
        s = RelaySettings(pki.cert_pem, pki.key_pem, host="127.0.0.1", port=0, **settings)
        self.relay = Relay(s, [RelayDevice("wt-1", KEY, self.wt), RelayDevice("bz-1", BZ_KEY, self.bz),
                               RelayDevice("wt-2", secrets.token_hex(32), self.wt)],
                           clock=self.clock)
        self.ctx = ssl.create_default_context(cafile=str(pki.ca_pem))

    async def __aenter__(self):
        port = await self.relay.start()
        self.base = f"https://localhost:{port}"
        self.http = httpx.AsyncClient(verify=self.ctx, timeout=20,
                                      limits=httpx.Limits(max_connections=200))
        return self

    async def __aexit__(self, *exc):
        await self.http.aclose()
        await self.relay.stop()
        await self.wt.aclose()
        await self.bz.aclose()

    async def get(self, device="wt-1", key=KEY, path=PATH, headers=None, now=None):
        h = headers or sign_headers(device, key, "GET", path,
                                    now=self.clock() if now is None else now)
        return await self.http.get(self.base + path, headers=h)


def scenario(provider, pki, fn, **kw):
    async def go():
        async with Harness(provider, pki, **kw) as h:
            return await fn(h)

    return asyncio.run(go())


def test_device_gets_credentials(provider, pki):
    async def fn(h):
        r = await h.get()
        return r.status_code, r.json(), r.headers

    status, body, headers = scenario(provider, pki, fn)
    assert status == 200
    assert set(body) == {"username", "password", "expires_at", "expires_in"}
    assert body["username"] == "app-5f1e2d"
    assert provider.token_valid(body["password"])
    assert 290 <= body["expires_in"] <= 300
    assert abs(body["expires_at"] - (time.time() + body["expires_in"])) < 3
    assert headers["Cache-Control"] == "no-store"


def test_biotz_device_gets_id_token(provider, pki):
    async def fn(h):
        return (await h.get("bz-1", BZ_KEY)).json()

    body = scenario(provider, pki, fn)
    assert body["username"] == BIOTZ_USER[0]
    assert provider.verify_id_token(body["password"])["sub"] == BIOTZ_USER[0]


def test_refusals_are_bare_401(provider, pki, caplog):
    caplog.set_level(logging.INFO, logger="uplink.relay.audit")

    async def fn(h):
        out = {}
        now = time.time()
        out["bad-signature"] = await h.get(key=secrets.token_hex(32))
        out["other-device-key"] = await h.get(device="wt-2", key=KEY)
        out["unknown-device"] = await h.get(device="intruder", key=KEY)
        out["stale-timestamp"] = await h.get(now=now - 120)
        out["future-timestamp"] = await h.get(now=now + 120)
        good = sign_headers("wt-1", KEY, "GET", PATH)
        first = await h.get(headers=good)
        out["replayed-nonce"] = await h.get(headers=good)
        # a signature for /v1/credentials does not cover ?fresh=1: no path swapping
        out["path-swap"] = await h.get(path=PATH + "?fresh=1", headers=dict(good))
        out["no-headers"] = await h.http.get(h.base + PATH)
        mangled = dict(sign_headers("wt-1", KEY), **{"X-Uplink-Time": "12:00"})
        out["malformed"] = await h.get(headers=mangled)
        return first, out

    first, out = scenario(provider, pki, fn)
    assert first.status_code == 200
    bodies = set()
    for why, r in out.items():
        assert r.status_code == 401, why
        bodies.add(r.text)
        assert "WWW-Authenticate" not in r.headers
    assert len(bodies) == 1  # the same answer whatever failed: nothing to learn from it
    reasons = [rec.getMessage() for rec in caplog.records if rec.name == "uplink.relay.audit"]
    for why in ("bad-signature", "unknown-device", "stale-timestamp", "replayed-nonce"):
        assert any(f"reason={why}" in line for line in reasons), why
    assert provider.token_requests == 1  # refusals never reach the provider


def test_replay_of_a_captured_request_later_is_refused(provider, pki):
    clock = Clock()

    async def fn(h):
        captured = sign_headers("wt-1", KEY, "GET", PATH, now=clock())
        ok = await h.get(headers=captured)
        clock.offset = 3600  # an hour later the nonce is long forgotten, the time is not
        later = await h.get(headers=captured)
        return ok.status_code, later.status_code

    assert scenario(provider, pki, fn, clock=clock) == (200, 401)


def test_single_flight_100_concurrent_requests_one_provider_call(provider, pki):
    provider.delay_s = 0.3

    async def fn(h):
        wt = await asyncio.gather(*(h.get() for _ in range(100)))
        n_wt = provider.token_requests
        bz = await asyncio.gather(*(h.get("bz-1", BZ_KEY) for _ in range(100)))
        return wt, n_wt, bz

    # 100 concurrent connections from one address: above the per-address cap meant for floods
    wt, n_wt, bz = scenario(provider, pki, fn, max_per_address=200)
    for rs in (wt, bz):
        assert [r.status_code for r in rs] == [200] * 100
        assert len({r.json()["password"] for r in rs}) == 1
    assert n_wt == 1
    assert provider.token_requests == 2


def test_never_hands_out_less_than_min_life(provider, pki):
    clock = Clock()
    provider.lifetime = 150

    async def fn(h):
        a = (await h.get()).json()
        clock.offset = 60  # 90 s left of 150: above min_life 80
        b = (await h.get()).json()
        clock.offset = 75  # 75 s left: below min_life: a new token
        c = (await h.get()).json()
        return a, b, c

    a, b, c = scenario(provider, pki, fn, clock=clock, min_life_s=80)
    assert b["password"] == a["password"] and 85 <= b["expires_in"] <= 90
    assert c["password"] != a["password"] and c["expires_in"] >= 140
    assert provider.token_requests == 2
    for x in (a, b, c):
        assert x["expires_in"] >= 80


def test_provider_tokens_shorter_than_min_life_give_503(provider, pki):
    provider.lifetime = 30

    async def fn(h):
        return [(await h.get()) for _ in range(5)]

    rs = scenario(provider, pki, fn, min_life_s=60)
    assert [r.status_code for r in rs] == [503] * 5
    assert all("password" not in r.text for r in rs)
    assert provider.token_requests == 1  # not one per request: the token is brand new


def test_fresh_forces_one_new_token_per_floor(provider, pki):
    async def fn(h):
        a = (await h.get()).json()
        b = (await h.get(path=PATH + "?fresh=1")).json()
        c = (await h.get(path=PATH + "?fresh=1")).json()  # within fresh_floor_s: same token
        return a, b, c

    a, b, c = scenario(provider, pki, fn, fresh_floor_s=10)
    assert b["password"] != a["password"] and c["password"] == b["password"]
    assert provider.token_requests == 2


def test_audit_one_line_per_request_without_secrets(provider, pki, caplog):
    caplog.set_level(logging.DEBUG)

    async def fn(h):
        got = []
        for dev, key in (("wt-1", KEY), ("bz-1", BZ_KEY), ("wt-1", "00" * 32), ("ghost", KEY)):
            hdr = sign_headers(dev, key, "GET", PATH)
            r = await h.get(headers=hdr)
            got.append((r, hdr))
        r = await h.http.get(h.base + "/nothing-here")
        return got, r

    got, r404 = scenario(provider, pki, fn)
    audit = [rec.getMessage() for rec in caplog.records if rec.name == "uplink.relay.audit"]
    assert len(audit) == 5
    assert "device=wt-1" in audit[0] and "status=200" in audit[0] and "user=app-5f1e2d" in audit[0]
    assert "status=401 reason=bad-signature" in audit[2]
    assert "device=ghost" in audit[3] and "reason=unknown-device" in audit[3]
    assert "status=404" in audit[4]
    secrets_ = [KEY, BZ_KEY, WEIGHTRON_CLIENT[1], WEIGHTRON_API_KEY, BIOTZ_USER[1]]
    for r, hdr in got:
        secrets_.append(hdr["X-Uplink-Signature"])
        if r.status_code == 200:
            secrets_.append(r.json()["password"])
    text = caplog.text
    for s in secrets_:
        assert s not in text


def test_tls_only_with_the_relay_ca(provider, pki, tmp_path):
    other = relay_pki.ensure_relay_pki(tmp_path, ["localhost"])

    async def fn(h):
        bad = httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(other.ca_pem)))
        try:
            with pytest.raises(httpx.ConnectError):
                await bad.get(h.base + PATH, headers=sign_headers("wt-1", KEY))
        finally:
            await bad.aclose()

    scenario(provider, pki, fn)


# -- relay_pki ----------------------------------------------------------------------------


def test_relay_pki_created_once_reused_and_extended(tmp_path):
    a = relay_pki.ensure_relay_pki(tmp_path, ["relay.lan", "192.168.1.10"])
    ca, cert = a.ca_pem.read_bytes(), a.cert_pem.read_bytes()
    for p in (a.ca_key, a.key_pem):
        assert os.stat(p).st_mode & 0o777 == 0o600
    b = relay_pki.ensure_relay_pki(tmp_path, ["relay.lan", "192.168.1.10"])
    assert (b.ca_pem.read_bytes(), b.cert_pem.read_bytes()) == (ca, cert)
    c = relay_pki.ensure_relay_pki(tmp_path, ["relay.lan", "192.168.1.10", "10.0.0.2"])
    assert c.ca_pem.read_bytes() == ca and c.cert_pem.read_bytes() != cert
    from cryptography import x509

    der = x509.load_der_x509_certificate(c.ca_der.read_bytes())
    assert der == x509.load_pem_x509_certificate(ca)
    leaf = x509.load_pem_x509_certificate(c.cert_pem.read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "relay.lan" in san.get_values_for_type(x509.DNSName)
    assert {str(i) for i in san.get_values_for_type(x509.IPAddress)} == {"192.168.1.10", "10.0.0.2"}


def test_device_key_created_once_in_the_store(tmp_path):
    from host_tools.secrets import SecretStore

    store = SecretStore(tmp_path / "secrets.json", use_keyring=False, env={})
    k1 = relay_pki.device_key(store, "greenhouse-1")
    assert len(bytes.fromhex(k1)) == 32
    assert relay_pki.device_key(store, "greenhouse-1") == k1
    assert relay_pki.device_key(store, "greenhouse-2") != k1
    again = SecretStore(tmp_path / "secrets.json", use_keyring=False, env={})
    assert relay_pki.device_key(again, "greenhouse-1") == k1
    assert os.stat(Path(tmp_path / "secrets.json")).st_mode & 0o777 == 0o600


def test_slow_provider_answer_is_not_cut_by_the_header_timeout(provider, pki):
    """The header deadline stops while a request is answered: a token fetch longer than it
    still reaches the device, and the keep-alive connection serves the next request."""
    provider.delay_s = 2.5

    async def fn(h):
        first = await h.get()
        second = await h.get()  # same connection (httpx keep-alive), cached token
        return first.status_code, second.status_code

    assert scenario(provider, pki, fn, header_timeout_s=1.0) == (200, 200)
