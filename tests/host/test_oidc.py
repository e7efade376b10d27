"""host_tools.oidc against a real OIDC provider on loopback (tests/oidc_provider.py, HTTPS)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from host_tools import oidc
from tests.oidc_provider import (
    BIOTZ_CLIENT,
    BIOTZ_USER,
    WEIGHTRON_API_KEY,
    WEIGHTRON_CLIENT,
)


@pytest.fixture(autouse=True)
def _reset(provider):
    provider.reset_counters()
    provider.lifetime = 300
    provider.delay_s = 0
    yield


def wt(provider, **kw) -> oidc.ClientCredentialsSettings:
    args = dict(token_url=provider.token_url, client_id=WEIGHTRON_CLIENT[0],
                client_secret=WEIGHTRON_CLIENT[1], api_key=WEIGHTRON_API_KEY,
                access_url=provider.access_url, ca=provider.ca_pem)
    args.update(kw)
    return oidc.ClientCredentialsSettings(**args)


def bz(provider, **kw) -> oidc.PasswordSettings:
    args = dict(token_url=provider.token_url, client_id=BIOTZ_CLIENT, username=BIOTZ_USER[0],
                password=BIOTZ_USER[1], ca=provider.ca_pem)
    args.update(kw)
    return oidc.PasswordSettings(**args)


def run(coro_fn):
    """Run an async scenario; sources are closed at the end."""
    return asyncio.run(coro_fn())


class FakeClock:
    def __init__(self, offset: float = 0.0):
        self.offset = offset

    def __call__(self) -> float:
        return time.time() + self.offset


def test_client_credentials_and_application_id(provider):
    async def go():
        src = oidc.WeightronSource(wt(provider))
        try:
            cred = await src.credential()
            tok = src.cached
        finally:
            await src.aclose()
        return cred, tok

    cred, tok = run(go)
    assert cred.username == "app-5f1e2d"  # the expired application is skipped
    assert cred.kind == "access_token"
    assert provider.token_valid(cred.password)
    assert tok.lifetime == pytest.approx(300)
    assert provider.token_requests == 1 and provider.access_requests == 1


def test_expiry_is_local_send_time_plus_expires_in(provider):
    # the local clock runs 1000 s ahead of the provider's: expiry follows the local clock
    clock = FakeClock(1000)
    provider.lifetime = 120

    async def go():
        src = oidc.WeightronSource(wt(provider), clock=clock)
        before = clock()
        try:
            tok = await src.token()
        finally:
            await src.aclose()
        return before, tok, clock()

    before, tok, after = run(go)
    assert before <= tok.obtained_at <= after
    assert tok.expires_at == pytest.approx(tok.obtained_at + 120)
    assert tok.remaining(clock()) > 110


def test_single_flight_concurrent_callers_share_one_request(provider):
    provider.delay_s = 0.3

    async def go():
        src = oidc.WeightronSource(wt(provider))
        b = oidc.BiotzSource(bz(provider))
        try:
            toks = await asyncio.gather(*(src.token(60) for _ in range(50)))
            n_tok = provider.token_requests
            # a cold start through credential(): token and application lookup both shared
            src2 = oidc.WeightronSource(wt(provider))
            creds = await asyncio.gather(*(src2.credential(60) for _ in range(50)))
            await src2.aclose()
            ids = await asyncio.gather(*(b.credential() for _ in range(50)))
        finally:
            await src.aclose()
            await b.aclose()
        return toks, n_tok, creds, ids, src

    toks, n_tok, creds, ids, src = run(go)
    assert len({t.access_token for t in toks}) == 1
    assert n_tok == 1 and src.provider_calls == 1
    assert len({c.password for c in creds}) == 1 and len({c.password for c in ids}) == 1
    assert provider.token_requests == 3
    assert provider.access_requests == 1  # the application lookup is single-flight too


def test_refresh_early_and_min_life(provider):
    provider.lifetime = 100
    clock = FakeClock()

    async def go():
        src = oidc.WeightronSource(wt(provider), clock=clock, early_s=30)
        try:
            t1 = await src.token()
            clock.offset = 20  # 80 s left: above early (min(30, 10% of 100) = 10)
            t2 = await src.token()
            clock.offset = 91  # 9 s left: below early: a new one
            t3 = await src.token()
            # 91 s left but the caller needs 95 s: a new one
            clock.offset = 100
            t4 = await src.token(min_life=95)
        finally:
            await src.aclose()
        return t1, t2, t3, t4

    t1, t2, t3, t4 = run(go)
    assert t2 is t1
    assert t3.access_token != t1.access_token
    assert t4.access_token != t3.access_token
    assert provider.token_requests == 3


def test_token_shorter_than_min_life_is_not_refetched_in_a_loop(provider):
    provider.lifetime = 30

    async def go():
        src = oidc.WeightronSource(wt(provider))
        try:
            for _ in range(5):
                tok = await src.token(min_life=60)
        finally:
            await src.aclose()
        return tok

    tok = run(go)
    assert tok.lifetime == pytest.approx(30)
    assert provider.token_requests == 1  # a brand new token is the best there is


def test_wrong_client_secret_names_error_not_secret(provider):
    bad = "definitely-wrong-secret-value"

    async def go():
        src = oidc.WeightronSource(wt(provider, client_secret=bad))
        try:
            await src.token()
        finally:
            await src.aclose()

    with pytest.raises(oidc.TokenError) as e:
        run(go)
    assert "invalid_client" in str(e.value)
    assert bad not in str(e.value)


def test_a_provider_that_takes_the_secret_in_http_basic_only_gets_it_there(provider, caplog):
    # Weightron names client_secret in the form and HTTP Basic: the form first, Basic once
    # the provider answers invalid_client to it, and Basic for every later request
    provider.require_basic(WEIGHTRON_CLIENT[0])
    caplog.set_level(logging.INFO, logger="uplink.oidc")

    async def go():
        src = oidc.WeightronSource(wt(provider), early_s=1000, refetch_floor_s=0)
        try:
            first = await src.token()
            second = await src.token(fresh=True)
        finally:
            await src.aclose()
        return first, second

    try:
        first, second = run(go)
    finally:
        provider.clients[WEIGHTRON_CLIENT[0]].auth_methods = ("client_secret_basic", "client_secret_post")
    assert provider.token_valid(first.access_token) and provider.token_valid(second.access_token)
    assert provider.token_requests == 3 and provider.refused == 1  # one refused form, then Basic twice
    said = [r.getMessage() for r in caplog.records if "HTTP Basic" in r.getMessage()]
    assert len(said) == 1 and WEIGHTRON_CLIENT[1] not in said[0]


def test_a_wrong_secret_is_refused_both_ways_and_named(provider):
    async def go():
        src = oidc.WeightronSource(wt(provider, client_secret="wrong-in-both-forms"))
        try:
            await src.token()
        finally:
            await src.aclose()

    with pytest.raises(oidc.TokenError, match="invalid_client"):
        run(go)
    assert provider.token_requests == 2  # the form, then HTTP Basic once: no loop


def test_wrong_password_refused(provider):
    async def go():
        src = oidc.BiotzSource(bz(provider, password="nope-nope"))
        try:
            await src.credential()
        finally:
            await src.aclose()

    with pytest.raises(oidc.TokenError, match="refused the login") as e:
        run(go)
    assert "nope-nope" not in str(e.value)


def test_password_grant_keeps_id_token(provider):
    async def go():
        src = oidc.BiotzSource(bz(provider))
        try:
            cred = await src.credential()
            return cred, src.cached
        finally:
            await src.aclose()

    cred, tok = run(go)
    assert cred.kind == "id_token" and cred.password == tok.id_token
    claims = provider.verify_id_token(cred.password)
    assert claims["sub"] == BIOTZ_USER[0] and claims["aud"] == BIOTZ_CLIENT
    assert tok.refresh_token


def test_refresh_used_then_login_again_when_refused(provider):
    async def go():
        src = oidc.BiotzSource(bz(provider))
        try:
            t1 = await src.token()
            t2 = await src.token(fresh=True)  # the refresh_token grant
            n_after_refresh = provider.token_requests
            provider.revoke_all()  # the session ends: the refresh token is refused
            t3 = await src.token(fresh=True)
            return t1, t2, t3, n_after_refresh
        finally:
            await src.aclose()

    t1, t2, t3, n = run(go)
    assert n == 2 and t2.access_token != t1.access_token and t2.id_token
    assert provider.refused == 1  # the refresh; then a password login
    assert provider.token_requests == 4
    assert provider.token_valid(t3.access_token)


def test_access_401_gets_fresh_token_and_retries(provider):
    async def go():
        src = oidc.WeightronSource(wt(provider))
        try:
            t1 = await src.token()
            provider.revoke_all()  # the cached token now fails at /access
            app = await src.application_id()
            return t1, src.cached, app, src
        finally:
            await src.aclose()

    t1, t2, app, src = run(go)
    assert app == "app-5f1e2d"
    assert t2.access_token != t1.access_token
    assert src.access_calls == 2 and provider.token_requests == 2


def test_access_wrong_api_key_and_expired_application(provider):
    async def one(settings):
        src = oidc.WeightronSource(settings)
        try:
            return await src.application_id()
        finally:
            await src.aclose()

    with pytest.raises(oidc.TokenError, match="HTTP 403"):
        asyncio.run(one(wt(provider, api_key="wrong")))
    # a pinned application is used as it is: no /access call (nor the token it needs)
    provider.reset_counters()
    assert asyncio.run(one(wt(provider, application_id="app-5f1e2d"))) == "app-5f1e2d"
    assert provider.access_requests == 0 and provider.token_requests == 0
    # no lookup at all when the application is pinned and there is no access URL
    assert asyncio.run(one(wt(provider, access_url=None, application_id="x"))) == "x"


def test_tls_is_verified(provider):
    async def go():
        src = oidc.WeightronSource(wt(provider, ca=None))  # system store: our CA is unknown
        try:
            await src.token()
        finally:
            await src.aclose()

    with pytest.raises(oidc.TokenError, match="cannot reach"):
        run(go)
    assert provider.token_requests == 0


def test_tokens_and_secrets_never_logged_or_in_repr(provider, caplog):
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []

    async def go():
        w = oidc.WeightronSource(wt(provider))
        b = oidc.BiotzSource(bz(provider))
        try:
            c = await w.credential()
            seen.append(c.password)
            d = await b.credential()
            seen.extend([d.password, b.cached.access_token, b.cached.refresh_token])
            await b.token(fresh=True)
            seen.extend([b.cached.access_token, b.cached.id_token, b.cached.refresh_token])
            provider.revoke_all()
            await b.token(fresh=True)
            seen.extend([b.cached.access_token, b.cached.id_token])
            seen.extend(repr(x) for x in (w.cached, b.cached, c, d, w.settings, b.settings))
        finally:
            await w.aclose()
            await b.aclose()

    run(go)
    secrets = [WEIGHTRON_CLIENT[1], WEIGHTRON_API_KEY, BIOTZ_USER[1]]
    tokens = [s for s in seen[:-6] if s]
    assert len(tokens) >= 8
    text = caplog.text
    assert "login for client" in text  # our own log lines are there ...
    for s in secrets + tokens:
        assert s not in text  # ... without any token, secret or password
    for r in seen[-6:]:
        for s in secrets + tokens:
            assert s not in r


def test_weightron_scope_defaults_to_openid_which_the_provider_requires(provider):
    # the documented rule, modelled by the test provider: no openid, no token
    with pytest.raises(oidc.TokenError, match="invalid_scope"):
        run(lambda: _token(wt(provider, scope=None)))
    tok = run(lambda: _token(wt(provider)))
    assert "openid" in (tok.scope or "").split()
    tok = run(lambda: _token(wt(provider, scope="openid offline_access")))
    assert set((tok.scope or "").split()) == {"openid", "offline_access"}


async def _token(settings):
    src = oidc.WeightronSource(settings)
    try:
        return await src.token()
    finally:
        await src.aclose()
