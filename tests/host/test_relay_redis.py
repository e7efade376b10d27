"""Relay replicas sharing a real redis-server (one per test) in front of the real test OIDC
provider: nonces, token cache, single-flight, the fresh floor and pacing hold across replicas;
Redis down fails replay checks closed (503 + Retry-After) and lets tokens fall back to memory."""

from __future__ import annotations

import asyncio
import secrets
import ssl
import time

import httpx
import pytest

from host_tools import oidc
from host_tools.relay import PATH, Relay, RelayDevice, RelaySettings, sign_headers
from host_tools.relay_state import Paced, RedisState, RevokedFile, StoreDown
from tests.oidc_provider import BIOTZ_CLIENT, BIOTZ_USER, WEIGHTRON_API_KEY, WEIGHTRON_CLIENT

KEY = secrets.token_hex(32)
BZ_KEY = secrets.token_hex(32)
STATE_KEY = secrets.token_bytes(32)


@pytest.fixture(autouse=True)
def _reset(provider):
    provider.reset_counters()
    provider.lifetime = 300
    provider.delay_s = 0


class Replica:
    """One relay replica: its own token sources (as in its own process), the shared Redis."""

    def __init__(self, provider, pki, redis_url, revoked=None, pace=(50.0, 100.0, 5.0), **settings):
        self.wt = oidc.WeightronSource(oidc.ClientCredentialsSettings(
            provider.token_url, *WEIGHTRON_CLIENT, api_key=WEIGHTRON_API_KEY,
            access_url=provider.access_url, ca=provider.ca_pem))
        self.bz = oidc.BiotzSource(oidc.PasswordSettings(
            provider.token_url, BIOTZ_CLIENT, *BIOTZ_USER, ca=provider.ca_pem))
        self.state = RedisState(redis_url, STATE_KEY, revoked=revoked, pace=pace)
        s = RelaySettings(pki.cert_pem, pki.key_pem, host="127.0.0.1", port=0, **settings)
        self.relay = Relay(s, [RelayDevice("wt-1", KEY, self.wt), RelayDevice("bz-1", BZ_KEY, self.bz)],
                           state=self.state)

    async def start(self):
        self.port = await self.relay.start()
        return self

    async def stop(self):
        await self.relay.stop()
        await self.wt.aclose()
        await self.bz.aclose()
        await self.state.close()


class Fleet:
    def __init__(self, provider, pki, redis, n=2, **kw):
        self.replicas = [Replica(provider, pki, redis.url, **kw) for _ in range(n)]
        self.ctx = ssl.create_default_context(cafile=str(pki.ca_pem))

    async def __aenter__(self):
        for r in self.replicas:
            await r.start()
        self.http = httpx.AsyncClient(verify=self.ctx, timeout=20, limits=httpx.Limits(max_connections=300))
        return self

    async def __aexit__(self, *exc):
        await self.http.aclose()
        for r in self.replicas:
            await r.stop()

    async def get(self, i, device="wt-1", key=KEY, path=PATH, headers=None):
        h = headers or sign_headers(device, key, "GET", path)
        return await self.http.get(f"https://localhost:{self.replicas[i].port}{path}", headers=h)


def run(provider, pki, redis, fn, **kw):
    async def go():
        async with Fleet(provider, pki, redis, **kw) as f:
            return await fn(f)

    return asyncio.run(go())


def test_a_nonce_is_accepted_once_across_replicas(provider, pki, redis):
    async def fn(f):
        captured = sign_headers("wt-1", KEY, "GET", PATH)
        first = await f.get(0, headers=captured)
        on_other = await f.get(1, headers=captured)
        on_same = await f.get(0, headers=captured)
        fresh = await f.get(1)
        return first.status_code, on_other.status_code, on_same.status_code, fresh.status_code

    assert run(provider, pki, redis, fn) == (200, 401, 401, 200)


def test_token_cache_shared_and_encrypted_with_ttl(provider, pki, redis):
    async def fn(f):
        a = (await f.get(0, "bz-1", BZ_KEY)).json()
        b = (await f.get(1, "bz-1", BZ_KEY)).json()
        r = f.replicas[0].state.r
        keys = [k async for k in r.scan_iter("uplink:relay:tok:*")]
        raw = [await r.get(k) for k in keys]
        ttls = [await r.pttl(k) for k in keys]
        return a, b, raw, ttls

    a, b, raw, ttls = run(provider, pki, redis, fn, min_life_s=60)
    assert a["password"] == b["password"]  # replica 1 served replica 0's token
    assert provider.token_requests == 1
    assert len(raw) == 1
    # at rest: neither the id_token, nor the access or refresh token, nor the user in clear
    assert a["password"].encode() not in raw[0] and BIOTZ_USER[0].encode() not in raw[0]
    assert b"refresh" not in raw[0] and b"eyJ" not in raw[0]
    # expiry (300 s) minus the minimum life (60 s)
    assert 230_000 <= ttls[0] <= 240_000


def test_single_flight_across_replicas(provider, pki, redis):
    provider.delay_s = 0.5

    async def fn(f):
        return await asyncio.gather(*(f.get(i % 3) for i in range(90)))

    rs = run(provider, pki, redis, fn, n=3, max_per_address=200)
    assert [r.status_code for r in rs] == [200] * 90
    assert len({r.json()["password"] for r in rs}) == 1
    assert provider.token_requests == 1


def test_fresh_floor_is_shared(provider, pki, redis):
    async def fn(f):
        a = (await f.get(0)).json()
        b = (await f.get(1, path=PATH + "?fresh=1")).json()
        c = (await f.get(0, path=PATH + "?fresh=1")).json()  # within the floor, other replica
        return a, b, c

    a, b, c = run(provider, pki, redis, fn, fresh_floor_s=10)
    assert b["password"] != a["password"]
    assert c["password"] == b["password"]  # not the token replica 0 had: the new one
    assert provider.token_requests == 2


def test_rotated_refresh_token_is_written_back(provider, pki, redis):
    provider.lifetime = 100

    async def fn(f):
        a = (await f.get(0, "bz-1", BZ_KEY)).json()
        # the cache entry lives expiry - min_life = 10 s; replica 1 finds it gone later on
        await f.replicas[0].state.r.delete(*[k async for k in f.replicas[0].state.r.scan_iter("uplink:relay:tok:*")])
        b = (await f.get(1, "bz-1", BZ_KEY)).json()
        return a, b

    # replica 1 never saw a token: it logs in (no refresh token of its own)
    a, b = run(provider, pki, redis, fn, min_life_s=90)
    assert a["password"] != b["password"]
    assert provider.token_requests == 2


def test_compare_and_delete_release_keeps_a_later_owners_lock(redis):
    async def go():
        st = RedisState(redis.url, STATE_KEY)
        t = st.tokens()
        try:
            a = await t.lock("c1", 0.2)
            assert a is not None and await t.lock("c1", 5) is None  # held
            await asyncio.sleep(0.3)  # a's TTL ran out while it was still busy
            b = await t.lock("c1", 5)
            assert b is not None
            await t.unlock("c1", a)  # a's late release must not free b's lock
            held = await t.locked("c1")
            await t.unlock("c1", b)
            return held, await t.locked("c1")
        finally:
            await st.close()

    assert asyncio.run(go()) == (True, False)


def test_pacing_is_fleet_wide(redis):
    async def go():
        a = RedisState(redis.url, STATE_KEY, pace=(2.0, 2.0, 0.6))
        b = RedisState(redis.url, STATE_KEY, pace=(2.0, 2.0, 0.6))
        try:
            waits = [await a.pace(), await b.pace(), await a.pace()]  # burst 2, then 0.5 s
            with pytest.raises(Paced) as e:
                await b.pace()  # 1 s away: over the 0.6 s a request may wait
            return waits, e.value.retry_after
        finally:
            await a.close()
            await b.close()

    waits, retry = asyncio.run(go())
    assert waits[:2] == [0, 0] and 0.4 <= waits[2] <= 0.5
    assert retry == 1


def test_paced_provider_call_is_503_with_retry_after(provider, pki, redis):
    async def fn(f):
        a = await f.get(0)  # the one call the bucket allows
        b = await f.get(1, "bz-1", BZ_KEY)  # another credential: over the budget
        return a, b

    a, b = run(provider, pki, redis, fn, pace=(0.01, 1.0, 1.0))
    assert a.status_code == 200
    assert b.status_code == 503 and int(b.headers["Retry-After"]) >= 1
    assert provider.token_requests == 1


def test_redis_down_fails_replay_closed_and_recovers(provider, pki, redis):
    async def fn(f):
        ok = await f.get(0)
        captured = sign_headers("wt-1", KEY, "GET", PATH)
        redis.kill()
        down = [await f.get(i % 2) for i in range(4)]
        replay_down = await f.get(0, headers=captured)
        redis.start()  # empty: every nonce is gone
        await asyncio.sleep(1.1)  # the replicas ask Redis again after retry_s (1 s)
        replay_after = await f.get(1, headers=captured)
        t0 = time.monotonic()
        while (after := await f.get(0)).status_code != 200 and time.monotonic() - t0 < 10:
            await asyncio.sleep(0.2)
        return ok, down, replay_down, replay_after, after

    ok, down, replay_down, replay_after, after = run(provider, pki, redis, fn)
    assert ok.status_code == 200
    for r in down + [replay_down]:
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
        assert "password" not in r.text
    # signed before the empty Redis's epoch: refused although its nonce is unknown there
    assert replay_after.status_code in (401, 503) and "password" not in replay_after.text
    assert after.status_code == 200


def test_tokens_fall_back_to_memory_when_redis_is_down(provider, redis):
    async def go():
        st = RedisState(redis.url, STATE_KEY)
        src = oidc.WeightronSource(oidc.ClientCredentialsSettings(
            provider.token_url, *WEIGHTRON_CLIENT, api_key=WEIGHTRON_API_KEY,
            access_url=provider.access_url, ca=provider.ca_pem))
        src.shared = st.tokens()
        try:
            a = await src.credential(60)
            redis.kill()
            b = await src.credential(60, fresh=True)  # Redis gone: straight to the provider
            c = await src.credential(60)  # and from this process's memory after
            with pytest.raises(StoreDown):
                await st.admit("wt-1", "n" * 16, int(time.time()), time.time())
            return a, b, c
        finally:
            await src.aclose()
            await st.close()

    a, b, c = asyncio.run(go())
    assert a.password != b.password and c.password == b.password
    assert provider.token_requests == 2


def test_revoked_set_reseeded_into_an_empty_redis(provider, pki, redis, tmp_path):
    revoked = RevokedFile(tmp_path / "revoked.json")

    async def fn(f):
        before = await f.get(0, "bz-1", BZ_KEY)
        await f.replicas[0].state.revoke("bz-1")
        after = await f.get(1, "bz-1", BZ_KEY)
        redis.kill()
        redis.start()
        await asyncio.sleep(1.1)
        while (other := await f.get(1)).status_code == 503:  # the first request after the restart
            await asyncio.sleep(0.2)
        again = await f.get(0, "bz-1", BZ_KEY)
        return before.status_code, after.status_code, other.status_code, again.status_code

    assert run(provider, pki, redis, fn, revoked=revoked) == (200, 401, 200, 401)


def test_more_concurrent_checks_than_pooled_connections_all_answer(redis):
    """200 requests checked at once on a 64-connection pool: they wait for a connection, none
    is refused for "too many connections" (which would answer devices 503)."""
    async def go():
        st = RedisState(redis.url, STATE_KEY)
        try:
            await st.start()
            now = time.time()
            return await asyncio.gather(*(st.admit(f"d-{i}", f"nonce-{i:08d}", int(now), now) for i in range(200)))
        finally:
            await st.close()

    assert asyncio.run(go()) == [(None, None)] * 200


def test_a_failed_provider_call_is_not_repeated_by_every_waiting_replica(provider, pki, redis):
    provider.delay_s = 0.5
    user, pw = BIOTZ_USER
    provider.users[user] = "changed-at-the-provider"  # every login is refused

    async def fn(f):
        return await asyncio.gather(*(f.get(i % 3, "bz-1", BZ_KEY) for i in range(3)))

    try:
        rs = run(provider, pki, redis, fn, n=3)
    finally:
        provider.users[user] = pw
    assert [r.status_code for r in rs] == [503] * 3
    assert provider.token_requests == 1  # the lock holder's; the others heard it failed
