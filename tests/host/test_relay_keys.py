"""Device keys that rotate and devices that are revoked while the relay runs: key ids in the
signature, a grace period for the previous key, `uplink relay revoke` / `rotate` against a real
`uplink relay` process (memory and Redis)."""

from __future__ import annotations

import asyncio
import re
import secrets
import ssl
import time

import httpx
import pytest

from host_tools import oidc, relay_keys, relay_pki
from host_tools.relay import PATH, Relay, RelayDevice, RelaySettings, sign_headers
from host_tools.relay_state import RedisState
from host_tools.secrets import SecretStore
from host_tools.tokens_cli import key_loader
from tests.oidc_provider import WEIGHTRON_API_KEY, WEIGHTRON_CLIENT
from tests.relay_flood import DEVICE, RelayProcess
from tests.relay_services import Redis, need_redis


class Clock:
    def __init__(self):
        self.offset = 0.0

    def __call__(self):
        return time.time() + self.offset


def test_key_id_is_the_keys_digest_and_round_trips():
    k = "ab" * 32
    assert relay_keys.key_id(k) == relay_keys.key_id(k) and len(relay_keys.key_id(k)) == 8
    assert relay_keys.key_id(k) != relay_keys.key_id("cd" * 32)
    d = relay_keys.DeviceKey(k, 1234.0)
    assert relay_keys.DeviceKey.decode(d.encode()) == d and k not in repr(d)


def test_rotation_without_restart_and_the_grace_period(provider, pki, tmp_path):
    store = SecretStore(tmp_path / "secrets.json", use_keyring=False, env={})
    old = relay_pki.device_key(store, "wt-1")
    clock = Clock()

    async def go():
        from host_tools.relay_state import MemoryState

        src = oidc.WeightronSource(oidc.ClientCredentialsSettings(
            provider.token_url, *WEIGHTRON_CLIENT, api_key=WEIGHTRON_API_KEY,
            access_url=provider.access_url, ca=provider.ca_pem), clock=clock)
        state = MemoryState()
        relay = Relay(RelaySettings(pki.cert_pem, pki.key_pem, host="127.0.0.1", port=0),
                      [RelayDevice("wt-1", old, src)], clock=clock, state=state,
                      key_loader=key_loader(state, store))
        port = await relay.start()
        ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
        out = {}
        try:
            async with httpx.AsyncClient(verify=ctx, timeout=10) as c:
                async def get(key, kid=True):
                    h = sign_headers("wt-1", key, now=clock(), kid=kid)
                    return (await c.get(f"https://localhost:{port}{PATH}", headers=h)).status_code

                out["before"] = await get(old)
                new, prev = relay_keys.rotate(store, "wt-1", grace_s=600, now=clock())
                out["new"] = await get(new.key)  # the relay loads the rotated key from the store
                out["old_in_grace"] = (await get(old), await get(old, kid=False))
                clock.offset = 601
                out["old_after_grace"] = (await get(old), await get(old, kid=False))
                out["new_after_grace"] = (await get(new.key), await get(new.key, kid=False))
                out["other"] = await get("cd" * 32)
        finally:
            await relay.stop()
            await src.aclose()
        return out

    out = asyncio.run(go())
    assert out["before"] == 200 and out["new"] == 200
    assert out["old_in_grace"] == (200, 200)
    assert out["old_after_grace"] == (401, 401)
    assert out["new_after_grace"] == (200, 200)
    assert out["other"] == 401


def test_replicas_find_a_rotated_key_in_redis(provider, pki, tmp_path):
    need_redis()
    redis = Redis(tmp_path / "redis").start()
    empty = SecretStore(tmp_path / "none.json", use_keyring=False, env={})  # not the rotating store
    old = secrets.token_hex(32)
    state_key = secrets.token_bytes(32)

    async def go():
        writer = RedisState(redis.url, state_key)
        state = RedisState(redis.url, state_key)
        src = oidc.WeightronSource(oidc.ClientCredentialsSettings(
            provider.token_url, *WEIGHTRON_CLIENT, api_key=WEIGHTRON_API_KEY,
            access_url=provider.access_url, ca=provider.ca_pem))
        relay = Relay(RelaySettings(pki.cert_pem, pki.key_pem, host="127.0.0.1", port=0),
                      [RelayDevice("wt-1", old, src)], state=state, key_loader=key_loader(state, empty))
        port = await relay.start()
        ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
        try:
            new = relay_keys.DeviceKey(secrets.token_hex(32))
            await writer.put_keys("wt-1", [new, relay_keys.DeviceKey(old, time.time() + 60)])
            raw = await writer.r.get("uplink:relay:keys:wt-1")
            async with httpx.AsyncClient(verify=ctx, timeout=10) as c:
                r = await c.get(f"https://localhost:{port}{PATH}", headers=sign_headers("wt-1", new.key, kid=True))
                o = await c.get(f"https://localhost:{port}{PATH}", headers=sign_headers("wt-1", old, kid=True))
            return r.status_code, o.status_code, raw, new.key
        finally:
            await relay.stop()
            await src.aclose()
            await state.close()
            await writer.close()
            redis.stop()

    new_status, old_status, raw, new_key = asyncio.run(go())
    assert (new_status, old_status) == (200, 200)
    assert new_key.encode() not in raw and old.encode() not in raw  # sealed at rest


async def _status(relay: RelayProcess, key: str) -> int:
    ctx = relay.ssl_context()
    t = httpx.AsyncHTTPTransport(verify=ctx, local_address="127.0.0.2", retries=0)
    async with httpx.AsyncClient(transport=t, timeout=10) as c:
        r = await c.get(f"https://127.0.0.1:{relay.port}{PATH}", headers=sign_headers(DEVICE, key, kid=True))
    return r.status_code


def _until(relay: RelayProcess, key: str, want: int, timeout: float = 10.0) -> int:
    end = time.monotonic() + timeout
    while True:
        got = asyncio.run(_status(relay, key))
        if got == want or time.monotonic() > end:
            return got
        time.sleep(0.2)


@pytest.mark.parametrize("shared", ["memory", "redis"])
def test_cli_revoke_and_rotate_reach_a_running_relay(provider, tmp_path, shared):
    redis = None
    args: tuple[str, ...] = ()
    if shared == "redis":
        need_redis()
        redis = Redis(tmp_path / "redis").start()
        args = ("--redis", redis.url)
    from tests.services import free_port

    admin = free_port()
    relay = RelayProcess(provider, tmp_path, args=(*args, "--admin-listen", f"127.0.0.1:{admin}")).start()
    try:
        key = relay.key
        assert asyncio.run(_status(relay, key)) == 200
        ready = httpx.get(f"http://127.0.0.1:{admin}/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["ready"] is True
        r = relay.cli("relay", *args, "revoke", DEVICE)
        assert r.returncode == 0, r.stderr
        assert _until(relay, key, 401) == 401  # no restart
        r = relay.cli("relay", *args, "revoke", DEVICE, "--undo")
        assert r.returncode == 0, r.stderr
        assert _until(relay, key, 200) == 200
        r = relay.cli("relay", *args, "rotate", DEVICE, "--grace", "300")
        assert r.returncode == 0, r.stderr
        store = SecretStore(relay.secrets, use_keyring=False, env={})
        new = relay_pki.device_key(store, DEVICE)
        assert new != key and new not in r.stdout + r.stderr  # never printed
        assert asyncio.run(_status(relay, new)) == 200  # the running relay takes the new key
        assert asyncio.run(_status(relay, key)) == 200  # and the old one in its grace period
        metrics = httpx.get(f"http://127.0.0.1:{admin}/metrics", timeout=10).text
        m = re.search(r'uplink_relay_refusals_total\{reason="revoked-device"\} (\S+)', metrics)
        assert m and float(m[1]) >= 1, metrics
    finally:
        log = relay.stop()
        if redis is not None:
            redis.stop()
    assert "Traceback" not in log


def test_revoke_with_redis_down_says_what_was_done(tmp_path):
    from tests.host.test_ota_cli import FLEET
    from tests.host.uplink_helpers import Env
    from tests.services import free_port

    env = Env(tmp_path / "env", FLEET)
    r = env.run("relay", "--redis", f"redis://127.0.0.1:{free_port()}/0", "revoke", "wt-1")
    assert r.code != 0 and "Traceback" not in r.output
    assert "revoked in the state directory's list" in r.output and "did not answer" in r.output
    # the list every replica (re)seeds from has it: a Redis that comes back empty refuses it
    assert (tmp_path / "env" / "state" / "relay-revoked.json").read_text().strip() == '["wt-1"]'
