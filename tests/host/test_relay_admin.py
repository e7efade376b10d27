"""The relay's admin listener (/healthz, /readyz, /metrics) and the audit line's replica and
request ids, with a real redis-server behind the relay."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import secrets
import ssl

import httpx
import pytest

from host_tools import oidc
from host_tools.relay import PATH, Relay, RelayDevice, RelaySettings, sign_headers
from host_tools.relay_admin import cert_problem
from host_tools.relay_state import RedisState
from tests.oidc_provider import WEIGHTRON_API_KEY, WEIGHTRON_CLIENT
from tests.relay_services import HAProxy, Redis, need_haproxy, need_redis

pytest.importorskip("prometheus_client", reason="the relay extra is not installed (make setup installs it)")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

KEY = secrets.token_hex(32)


def samples(text: str) -> dict:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_health_ready_metrics_and_ids(provider, pki, tmp_path, caplog):
    need_redis()
    caplog.set_level(logging.INFO, logger="uplink.relay.audit")
    redis = Redis(tmp_path / "redis").start()

    async def go():
        src = oidc.WeightronSource(oidc.ClientCredentialsSettings(
            provider.token_url, *WEIGHTRON_CLIENT, api_key=WEIGHTRON_API_KEY,
            access_url=provider.access_url, ca=provider.ca_pem))
        state = RedisState(redis.url, secrets.token_bytes(32))
        s = RelaySettings(pki.cert_pem, pki.key_pem, host="127.0.0.1", port=0, admin_port=0,
                          replica_id="replica-a")
        relay = Relay(s, [RelayDevice("wt-1", KEY, src)], state=state)
        port = await relay.start()
        admin = f"http://127.0.0.1:{relay.admin.port}"
        ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
        out = {}
        try:
            async with httpx.AsyncClient(verify=ctx, timeout=10) as c:
                h = sign_headers("wt-1", KEY)
                ok = await c.get(f"https://localhost:{port}{PATH}", headers=h)
                again = await c.get(f"https://localhost:{port}{PATH}")  # unsigned
                replay = await c.get(f"https://localhost:{port}{PATH}", headers=h)
                out["ids"] = [r.headers["X-Request-Id"] for r in (ok, again, replay)]
                out["device_port_metrics"] = (await c.get(f"https://localhost:{port}/metrics")).status_code
                out["healthz"] = (await c.get(admin + "/healthz")).json()
                out["readyz"] = (await c.get(admin + "/readyz")).status_code
                m = await c.get(admin + "/metrics")
                out["ctype"] = m.headers["Content-Type"]
                out["metrics"] = samples(m.text)
                redis.kill()
                down = await c.get(f"https://localhost:{port}{PATH}", headers=sign_headers("wt-1", KEY))
                out["down"] = down.status_code
                r = await c.get(admin + "/readyz")
                out["readyz_down"] = (r.status_code, r.json())
                out["healthz_down"] = (await c.get(admin + "/healthz")).status_code
                out["metrics_down"] = samples((await c.get(admin + "/metrics")).text)
        finally:
            await relay.stop()
            await src.aclose()
            await state.close()
            redis.stop()
        return out

    out = asyncio.run(go())
    m = out["metrics"]
    route = ("route", PATH)
    assert m[("uplink_relay_requests_total", (route, ("status", "200")))] == 1
    assert m[("uplink_relay_requests_total", (route, ("status", "401")))] == 2
    assert m[("uplink_relay_nonce_refusals_total", ())] == 1
    assert m[("uplink_relay_refusals_total", (("reason", "bad-device-header"),))] == 1
    assert m[("uplink_relay_provider_calls_total", ())] == 1
    assert m[("uplink_relay_request_seconds_count", (route,))] == 3
    assert m[("uplink_relay_redis_errors_total", ())] == 0
    assert out["ctype"].startswith("text/plain")
    assert out["device_port_metrics"] == 404  # not on the device port
    assert out["healthz"] == {"status": "ok", "replica": "replica-a"} and out["readyz"] == 200
    assert out["down"] == 503
    status, body = out["readyz_down"]
    assert status == 503 and body["problems"] == ["redis state store does not answer"]
    assert out["healthz_down"] == 200  # the process is up: only readiness goes
    assert out["metrics_down"][("uplink_relay_redis_errors_total", ())] >= 1
    lines = [r.getMessage() for r in caplog.records if r.name == "uplink.relay.audit"]
    ids = [re.search(r" req=(\S+) ", ln).group(1) for ln in lines]  # type: ignore[union-attr]
    assert all(ln.startswith("replica=replica-a ") for ln in lines)
    assert ids[:3] == out["ids"] and len(set(ids)) == len(ids)


def test_readyz_refuses_an_expired_or_future_certificate(pki):
    now = dt.datetime.now(dt.timezone.utc)
    assert cert_problem(pki.cert_pem, now) is None
    assert "expired" in (cert_problem(pki.cert_pem, now + dt.timedelta(days=365 * 30)) or "")
    assert "not valid before" in (cert_problem(pki.cert_pem, now - dt.timedelta(days=2)) or "")


def test_haproxy_takes_a_replica_whose_redis_is_gone_out_of_rotation(provider, pki, tmp_path):
    """The balancer's check asks /readyz: a replica that cannot reach its Redis (its replay
    checks answer 503) gets no devices; the other serves them all."""
    need_redis()
    need_haproxy()
    redis_a = Redis(tmp_path / "redis-a").start()
    redis_b = Redis(tmp_path / "redis-b").start()

    async def go():
        srcs, relays, states = [], [], []
        for name, r in (("a", redis_a), ("b", redis_b)):
            src = oidc.WeightronSource(oidc.ClientCredentialsSettings(
                provider.token_url, *WEIGHTRON_CLIENT, api_key=WEIGHTRON_API_KEY,
                access_url=provider.access_url, ca=provider.ca_pem))
            st = RedisState(r.url, secrets.token_bytes(32))
            s = RelaySettings(pki.cert_pem, pki.key_pem, host="127.0.0.1", port=0, admin_port=0,
                              replica_id=name, trusted_proxies=("127.0.0.1",))
            relay = Relay(s, [RelayDevice("wt-1", KEY, src)], state=st)
            await relay.start()
            srcs.append(src)
            states.append(st)
            relays.append(relay)
        ports = [r.port for r in relays]
        proxy = HAProxy(tmp_path / "haproxy", {"fleet": ports},
                        checks={r.port: r.admin.port for r in relays}).start()
        ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
        url = f"https://localhost:{proxy.ports['fleet']}{PATH}"
        try:
            async def until(state: str):
                for _ in range(200):
                    if await asyncio.to_thread(proxy.status, "fleet", "r0") == state:
                        return state
                    await asyncio.sleep(0.05)
                return await asyncio.to_thread(proxy.status, "fleet", "r0")

            assert await until("UP") == "UP"
            redis_a.kill()
            down = await until("DOWN")
            out = []
            async with httpx.AsyncClient(verify=ctx, timeout=10) as c:
                for _ in range(10):  # new connections: round robin would give r0 half of them
                    out.append((await c.get(url, headers=sign_headers("wt-1", KEY) | {"Connection": "close"})))
            return down, [r.status_code for r in out]
        finally:
            proxy.stop()
            for relay, st, src in zip(relays, states, srcs, strict=True):
                await relay.stop()
                await st.close()
                await src.aclose()

    try:
        down, statuses = asyncio.run(go())
    finally:
        redis_a.stop()
        redis_b.stop()
    assert down == "DOWN"
    assert statuses == [200] * 10
