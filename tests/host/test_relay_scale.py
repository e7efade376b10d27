"""Proof of issue 27: relay replicas on one real redis-server behind a real haproxy
(send-proxy-v2), on loopback.

- three `uplink relay --redis` processes: 1,000 captured signed requests, each sent to all
  three replicas at once, are answered 200 exactly once each;
- a reboot wave (one new TLS connection per device) through the balancer: provider calls =
  distinct credentials when cold, 0 when warm, every device served. The test runs 600 devices
  on 60 credentials to stay bounded on a shared box; `make bench BENCH_ARGS=relay_scale` runs
  the 10,000;
- Redis killed for 10 s and restarted empty: 503s only while it is down, no replay accepted.

How fast any of this is, is for the bench; the bounds here only keep a broken relay from
hanging the suite.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
import time

import httpx
import pytest

from host_tools import relay_pki
from host_tools.relay import PATH, sign_headers
from tests.oidc_provider import OIDCProvider
from tests.relay_flood import DEVICE, RelayProcess
from tests.relay_scale import ReplicaProcess, add_users, ask, fleet_spec, wave
from tests.relay_services import HAProxy, Redis, need_haproxy, need_redis

pytestmark = pytest.mark.slow  # a minute of real processes: not in `make test-fast`

CAPTURED = 1000
WAVE_DEVICES = 600  # the bench: 10,000
WAVE_CREDENTIALS = 60
OUTAGE_S = 10.0


@pytest.fixture
def provider():
    p = OIDCProvider(lifetime=300).start()
    yield p
    p.stop()


@pytest.fixture
def redis(tmp_path):
    need_redis()
    need_haproxy()
    r = Redis(tmp_path / "redis").start()
    yield r
    r.stop()


def test_a_captured_request_sent_to_three_replicas_is_served_once(provider, redis, tmp_path):
    args = ("--redis", redis.url, "--trusted-proxy", "127.0.0.1")
    replicas = []
    proxy = None
    try:
        for i in range(3):  # one after the other: the first creates the device key and state key
            replicas.append(RelayProcess(provider, tmp_path, args=(*args, "--replica-id", f"r{i}"),
                                         name=f"r{i}").start())
        proxy = HAProxy(tmp_path / "haproxy", {f"r{i}": [r.port] for i, r in enumerate(replicas)}).start()
        ctx = replicas[0].ssl_context()
        key = replicas[0].key

        async def go():
            clients = [httpx.AsyncClient(verify=ctx, timeout=30, limits=httpx.Limits(max_connections=16))
                       for _ in replicas]
            sem = asyncio.Semaphore(48)

            async def one(headers):  # the same captured request to the three replicas at once
                async with sem:
                    rs = await asyncio.gather(*(
                        c.get(f"https://localhost:{proxy.ports[f'r{i}']}{PATH}", headers=headers)
                        for i, c in enumerate(clients)))
                return [r.status_code for r in rs]

            try:
                captured = [sign_headers(DEVICE, key) for _ in range(CAPTURED)]
                return await asyncio.gather(*(one(h) for h in captured))
            finally:
                for c in clients:
                    await c.aclose()

        results = asyncio.run(go())
    finally:
        if proxy is not None:
            proxy.stop()
        logs = [r.stop() for r in replicas]
    assert len(results) == CAPTURED
    bad = [r for r in results if sorted(r) != [200, 401, 401]]
    assert not bad, f"{len(bad)} captured requests not served exactly once: {bad[:5]}"
    # every replica took its share of the 200s, and all three asked the provider once together
    assert all(any(r[i] == 200 for r in results) for i in range(3))
    assert provider.token_requests == 1
    for i, log in enumerate(logs):
        assert f"replica=r{i} " in log and "peer=127.0.0.1 " in log and "Traceback" not in log
        assert "reason=replayed-nonce" in log


def _replicas(tmp_path, provider, redis, spec, n, **kw):
    pki = relay_pki.ensure_relay_pki(tmp_path / "pki", ["localhost", "127.0.0.1"])
    base = {"cert_pem": str(pki.cert_pem), "key_pem": str(pki.key_pem), "port": 0,
            "token_url": provider.token_url, "provider_ca": provider.ca_pem, "fleet": spec,
            "redis": redis.url if redis else None, "state_key": secrets.token_hex(32),
            "trusted_proxies": ["127.0.0.1"], "provider_rate": 1000.0, "provider_burst": 1000.0,
            "max_per_address": 64}
    base.update(kw)
    reps = [ReplicaProcess(tmp_path / "replicas", base, f"r{i}").start() for i in range(n)]
    proxy = HAProxy(tmp_path / "haproxy", {"fleet": [r.port for r in reps]}).start()
    return pki, reps, proxy


def test_reboot_wave_cold_then_warm_through_the_balancer(provider, redis, tmp_path):
    spec = fleet_spec(WAVE_DEVICES, WAVE_CREDENTIALS)
    add_users(provider, spec)
    pki, reps, proxy = _replicas(tmp_path, provider, redis, spec, 3)
    calls = []
    try:
        ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
        cold = asyncio.run(wave(proxy.ports["fleet"], ctx, spec["devices"], concurrency=60))
        after_cold = provider.token_requests
        warm = asyncio.run(wave(proxy.ports["fleet"], ctx, spec["devices"], concurrency=60))
    finally:
        proxy.stop()
        calls = [r.stop() for r in reps]
    assert (cold.served, cold.failed) == (WAVE_DEVICES, 0), cold.statuses
    assert (warm.served, warm.failed) == (WAVE_DEVICES, 0), warm.statuses
    assert after_cold == WAVE_CREDENTIALS  # one per distinct credential, across the three replicas
    assert provider.token_requests == after_cold  # warm: none
    assert sum(c or 0 for c in calls) == WAVE_CREDENTIALS
    assert all(c for c in calls)  # the balancer spread the work: every replica asked some


def test_redis_killed_and_restarted_empty(provider, redis, tmp_path):
    spec = fleet_spec(20, 2)
    add_users(provider, spec)
    pki, reps, proxy = _replicas(tmp_path, provider, redis, spec, 3)
    port = proxy.ports["fleet"]
    ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
    timeline: list[tuple[float, int, str]] = []  # (time, status, retry-after)
    replays: list[tuple[float, int]] = []

    async def go():
        devs = spec["devices"]
        used = []
        for i in range(10):  # served before the outage: their nonces are in the old Redis
            name, key, _ = devs[i % len(devs)]
            h = sign_headers(name, key)
            status, _, _ = await ask(port, ctx, h, "127.0.1.9")
            assert status == 200
            used.append(h)
        stop = asyncio.Event()

        async def device():
            i = 0
            while not stop.is_set():
                name, key, _ = devs[i % len(devs)]
                status, hdrs, _ = await ask(port, ctx, sign_headers(name, key), "127.0.1.2")
                timeline.append((time.monotonic(), status, hdrs.get("retry-after", "")))
                i += 1
                await asyncio.sleep(0.05)

        async def replayer():
            while not stop.is_set():
                for h in used:
                    status, _, _ = await ask(port, ctx, h, "127.0.1.3")
                    replays.append((time.monotonic(), status))
                await asyncio.sleep(0.1)

        tasks = [asyncio.create_task(device()), asyncio.create_task(replayer())]
        t_kill, t_up = await redis.outage(1.0, OUTAGE_S, 5.0)
        stop.set()
        await asyncio.gather(*tasks)
        return t_kill, t_up

    try:
        t_kill, t_up = asyncio.run(go())
    finally:
        proxy.stop()
        for r in reps:
            r.stop()
    before = [s for t, s, _ in timeline if t < t_kill]
    during = [(s, ra) for t, s, ra in timeline if t_kill + 0.2 < t < t_up]
    after = [(t, s) for t, s, _ in timeline if t >= t_up]
    assert before and set(before) == {200}
    assert during and all(s == 503 and ra for s, ra in during), during[:5]  # closed, with Retry-After
    first_ok = next(t for t, s in after if s == 200)
    print(f"recovery after Redis came back empty: {first_ok - t_up:.2f} s")
    # each replica asks Redis again 1 s after its last failure, and refuses requests signed in
    # the second it found Redis empty (a 503 with Retry-After each): 200s only after that
    settle = t_up + 2.5
    assert all(s == 200 for t, s in after if t > settle), [s for t, s in after if t > settle]
    assert all(ra for t, s, ra in timeline if t >= t_up and s == 503)
    assert replays and not [s for _, s in replays if s == 200]  # never a replay accepted
