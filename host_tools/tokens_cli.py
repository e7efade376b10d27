"""`uplink token DEVICE` and `uplink relay`: the fleet file mapped onto host_tools.oidc and
host_tools.relay (which know nothing of the fleet, so they can be tested on their own).

    uplink token greenhouse-1            what was obtained and when it expires (token hidden)
    uplink token greenhouse-1 --reveal   the token too (it is a live credential: careful)
    uplink token greenhouse-1 --json     the same as JSON
    uplink relay                         serve every relay device of the fleet over HTTPS

A provider with a private CA: point SSL_CERT_FILE at its PEM bundle (httpx honours it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import re
import time
from typing import Annotated, Optional

import typer
from rich.table import Table

from host_tools import oidc
from host_tools.state import S
from host_tools.ui import UI


def oidc_settings(dev, store) -> oidc.Settings:
    """The device's `platform.oidc` (fleet models) as oidc settings, secrets resolved."""
    p = dev.platform
    o = getattr(p, "oidc", None)
    if o is None:
        from host_tools.fleet import FleetError

        raise FleetError([f"device '{dev.name}' has no [platform.oidc] (only weightron and biotz "
                          "devices get tokens)"])
    ctx = f"devices.{dev.name}.platform.oidc"
    if p.kind == "weightron":
        return oidc.ClientCredentialsSettings(
            token_url=o.token_url,
            client_id=o.client_id,
            client_secret=store.resolve(o.client_secret, context=ctx + ".client_secret"),
            scope=o.scope,
            api_key=store.resolve(o.api_key, context=ctx + ".api_key"),
            access_url=o.access_url,
            application_id=o.application_id or getattr(p, "application_id", None),
        )
    return oidc.PasswordSettings(
        token_url=o.token_url,
        client_id=o.client_id,
        username=o.username,
        password=store.resolve(o.password, context=ctx + ".password"),
    )


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


async def fetch_token(settings: oidc.Settings) -> tuple[oidc.Credential, oidc.Token]:
    src = oidc.source_for(settings)
    try:
        cred = await src.credential()
        tok = src.cached
        assert tok is not None
        return cred, tok
    finally:
        await src.aclose()


def token_report(device: str, settings: oidc.Settings, cred: oidc.Credential, tok: oidc.Token,
                 reveal: bool, now: float | None = None) -> dict:
    now = time.time() if now is None else now
    grant = "password" if isinstance(settings, oidc.PasswordSettings) else "client_credentials"
    out = {
        "device": device,
        "grant": grant,
        "token_url": settings.token_url,
        "client_id": settings.client_id,
        "username": cred.username,
        "credential": cred.kind,
        "obtained_at": _iso(tok.obtained_at),
        "expires_at": _iso(tok.expires_at),
        "expires_in_s": int(tok.expires_at - now),
        "has_refresh_token": bool(tok.refresh_token),
        "token": None,
    }
    if reveal:
        out["token"] = cred.password
        if tok.id_token and cred.kind != "id_token":
            out["id_token"] = tok.id_token
        if cred.kind == "id_token":
            out["access_token"] = tok.access_token
    return out


def register(app: typer.Typer) -> None:
    @app.command("token")
    def token_cmd(
        device: Annotated[str, typer.Argument(help="Device name in the fleet file.")],
        reveal: Annotated[bool, typer.Option("--reveal", help="Print the token itself.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Output JSON.")] = False,
    ):
        """Fetch the device's platform token from its OIDC provider and say when it expires."""
        settings = oidc_settings(S.fleet().device(device), S.store)
        cred, tok = asyncio.run(fetch_token(settings))
        rep = token_report(device, settings, cred, tok, reveal)
        if as_json:
            if not reveal:
                rep.pop("token")
            UI.data(rep)
            return
        t = Table(show_header=False, box=None)
        for k, v in rep.items():
            if k == "token" and v is None:
                v = f"(hidden: {len(cred.password)} characters; --reveal shows it)"
            t.add_row(k, str(v))
        UI.out.print(t)

    relay_app = typer.Typer(invoke_without_command=True, no_args_is_help=False)
    app.add_typer(relay_app, name="relay")

    @relay_app.callback()
    def relay_cmd(
        ctx: typer.Context,
        listen: Annotated[Optional[str], typer.Option(
            "--listen", help="HOST:PORT to listen on (default: \\[relay] listen).")] = None,
        min_life: Annotated[Optional[int], typer.Option(
            "--min-life", help="Never hand out a token with fewer seconds left.")] = None,
        max_connections: Annotated[Optional[int], typer.Option(
            "--max-connections",
            help="Open connections in all (default 1000, lowered to fit the open-file limit).",
        )] = None,
        max_per_address: Annotated[Optional[int], typer.Option(
            "--max-per-address", help="Open connections per client address (default 64).")] = None,
        header_timeout: Annotated[Optional[float], typer.Option(
            "--header-timeout",
            help="Seconds a connection has to send its request headers (default 10).")] = None,
        redis: Annotated[Optional[str], typer.Option(
            "--redis", help="Share state with other replicas on redis://HOST:PORT/DB "
                            "(default: \\[relay] redis; none: this process's memory).")] = None,
        trusted_proxy: Annotated[Optional[list[str]], typer.Option(
            "--trusted-proxy", help="A balancer address/network whose PROXY v2 header names the client "
                                    "(repeat; default: \\[relay] trusted_proxies).")] = None,
        admin_listen: Annotated[Optional[str], typer.Option(
            "--admin-listen", help="HOST:PORT for /healthz, /readyz, /metrics (plain HTTP; "
                                   "default: \\[relay] admin_listen, else none).")] = None,
        replica_id: Annotated[Optional[str], typer.Option(
            "--replica-id", help="This replica's name in the audit log (default: HOST-PID).")] = None,
    ):
        """Serve fresh platform credentials to the fleet's devices over HTTPS (token relay).

        `uplink relay revoke DEVICE` and `uplink relay rotate DEVICE` change a device's access
        while the relay (all its replicas) keeps running."""
        if ctx.invoked_subcommand is not None:
            ctx.obj = {"redis": redis}
            return
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        limits = {k: v for k, v in (("max_connections", max_connections),
                                    ("max_per_address", max_per_address),
                                    ("header_timeout_s", header_timeout)) if v is not None}
        if trusted_proxy:
            limits["trusted_proxies"] = tuple(trusted_proxy)
        if replica_id:
            limits["replica_id"] = replica_id
        if admin_listen:
            limits["admin_host"], limits["admin_port"] = _listen(admin_listen)
        relay = build_relay(S.fleet(), S.store, listen=listen, min_life=min_life, redis=redis, **limits)
        try:
            asyncio.run(relay.serve_forever())
        except KeyboardInterrupt:
            pass


    @relay_app.command("revoke")
    def revoke_cmd(
        ctx: typer.Context,
        device: Annotated[str, typer.Argument(help="Device name in the fleet file.")],
        undo: Annotated[bool, typer.Option("--undo", help="Let the device in again.")] = False,
    ):
        """Refuse DEVICE at once on every replica (401), without a restart."""
        fl = S.fleet()
        dev = fl.device(device)
        if not getattr(dev.platform, "relay", False):
            from host_tools.fleet import FleetError

            raise FleetError([f"{device}: credentials is not \"relay\": the relay does not serve it"])
        _shared(fl, lambda: _revoke(fl, S.store, (ctx.obj or {}).get("redis"), device, not undo),
                f"{device}: {'let in again' if undo else 'revoked'} in the state directory's list")
        UI.text(f"{device}: {'let in again' if undo else 'revoked: every replica answers it 401'}")

    @relay_app.command("rotate")
    def rotate_cmd(
        ctx: typer.Context,
        device: Annotated[str, typer.Argument(help="Device name in the fleet file.")],
        grace: Annotated[Optional[int], typer.Option(
            "--grace", help="Seconds the old key is still accepted (default: \\[relay] key_grace_s).")] = None,
    ):
        """Give DEVICE a new relay key; the old one works for the grace period, then stops."""
        from host_tools import relay_keys

        fl = S.fleet()
        dev = fl.device(device)
        if not getattr(dev.platform, "relay", False):
            from host_tools.fleet import FleetError

            raise FleetError([f"{device}: credentials is not \"relay\": it has no relay key"])
        rc = _relay_cfg(fl)
        grace_s = float(grace if grace is not None else rc.key_grace_s)
        new, prev = relay_keys.rotate(S.store, device, grace_s)
        _shared(fl, lambda: _publish_keys(fl, S.store, (ctx.obj or {}).get("redis"), device,
                                          [new] + ([prev] if prev else [])),
                f"{device}: the new key is in the secret store")
        until = _iso(prev.until) if prev and prev.until else "-"
        UI.text(f"{device}: new relay key {new.kid}; the old one ({prev.kid if prev else '-'}) is accepted "
                f"until {until}. Run `uplink provision {device}` and deploy to give it the new key.")


def _shared(fl, coro_fn, done: str) -> None:
    """Run a change against the relay's shared state; Redis not answering is a clear error
    that says what was done already and what to do."""
    from host_tools.errors import UplinkError
    from host_tools.relay_state import StoreDown

    try:
        asyncio.run(coro_fn())
    except StoreDown:
        raise UplinkError(f"{done}, but Redis ({_relay_cfg(fl).redis or '--redis'}) did not answer, so "
                          "running replicas have not heard of it: run the command again when Redis is up") from None


def _relay_cfg(fl):
    from host_tools.fleet import FleetError

    if fl.relay is None:
        raise FleetError([f"{fl.path.name}: no [relay] table"])
    return fl.relay


async def _revoke(fl, store, redis: str | None, device: str, revoked: bool) -> None:
    _relay_cfg(fl)
    state = relay_state(fl, store, redis)
    try:
        await state.revoke(device, revoked)
    finally:
        await state.close()


async def _publish_keys(fl, store, redis: str | None, device: str, keys) -> None:
    """Replicas on Redis find a rotated key there (they may not share this secret store)."""
    _relay_cfg(fl)
    state = relay_state(fl, store, redis)
    try:
        if state.shared:
            await state.put_keys(device, keys)
    finally:
        await state.close()


async def publish_offer(fl, store, device: str, offer: str) -> None:
    """`uplink ota`: replicas on Redis hear of the offer there (the bundle stays on storage)."""
    state = relay_state(fl, store)
    try:
        if state.shared:
            await state.publish_offer(device, offer)
    finally:
        await state.close()


def key_loader(state, store):
    """How a running relay finds a device's keys after a rotation: Redis, then the store."""
    from host_tools import relay_keys
    from host_tools.relay_state import StoreDown

    async def load(device: str):
        if state.shared:
            try:
                keys = await state.get_keys(device)
                if keys:
                    return keys
            except StoreDown:
                pass
        return relay_keys.load(store, device)

    return load


def relay_hosts(relay_cfg) -> list[str]:
    """The names the relay certificate covers: the same rule `uplink provision` uses."""
    if relay_cfg.hosts:
        return list(relay_cfg.hosts)
    if relay_cfg.url:
        return [relay_cfg.url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0]]
    return ["localhost"]


def _listen(s: str) -> tuple[str, int]:
    m = re.match(r"^\[?([^\]]*)\]?:(\d+)$", s)
    if not m:  # exit 3 as before, though --listen may have given it
        from host_tools.fleet import FleetError

        raise FleetError([f"listen: expected HOST:PORT, got {s!r}"])
    return m.group(1) or "0.0.0.0", int(m.group(2))


def build_relay(fl, store, *, listen: str | None = None, min_life: int | None = None,
                redis: str | None = None, **limits):
    """A Relay for every device of the fleet whose credentials = "relay"."""
    from host_tools import relay as relay_mod
    from host_tools import relay_keys, relay_pki
    from host_tools.fleet import FleetError

    rc = fl.relay
    if rc is None:
        raise FleetError([f"{fl.path.name}: no [relay] table"])
    host, port = _listen(listen or rc.listen)
    pki = relay_pki.ensure_relay_pki(fl.state_dir, relay_hosts(rc))
    sources: dict = {}  # devices with the same provider settings share one token source
    devices = []
    for name, dev in fl.devices.items():
        if not getattr(dev.platform, "relay", False):
            continue
        settings = oidc_settings(dev, store)
        src = sources.get(settings)
        if src is None:
            src = sources[settings] = oidc.source_for(settings)
        key = relay_pki.device_key(store, name)
        prev = next((k for k in relay_keys.load(store, name) if k.until is not None), None)
        devices.append(relay_mod.RelayDevice(name, key, src, prev))
    if not devices:
        raise FleetError([f"{fl.path.name}: no device has credentials = \"relay\""])
    limits.setdefault("trusted_proxies", tuple(rc.trusted_proxies))
    if rc.admin_listen and "admin_port" not in limits:
        limits["admin_host"], limits["admin_port"] = _listen(rc.admin_listen)
    for x in limits["trusted_proxies"]:
        try:
            ipaddress.ip_network(x, strict=False)
        except ValueError:
            raise FleetError([f"--trusted-proxy: {x!r} is not an IP address or network "
                              "(like 10.0.0.2 or 10.0.0.0/24)"]) from None
    settings = relay_mod.RelaySettings(
        cert_pem=pki.cert_pem, key_pem=pki.key_pem, host=host, port=port,
        min_life_s=float(min_life if min_life is not None else rc.min_life_s),
        ota_dir=fl.state_dir / "ota", **limits,  # `uplink ota DEVICE` leaves bundles there
    )
    state = relay_state(fl, store, redis, settings.max_skew_s)
    return relay_mod.Relay(settings, devices, state=state, key_loader=key_loader(state, store))


def relay_state(fl, store, redis: str | None = None, window_s: float = 30.0):
    """The relay's state store: Redis when the fleet (or --redis) names one, else memory."""
    from host_tools import relay_pki
    from host_tools.relay_state import MemoryState, RedisState, RevokedFile

    rc = fl.relay
    revoked = RevokedFile(fl.state_dir / "relay-revoked.json")  # on storage every replica reads
    pace = (rc.provider_rate, float(rc.provider_burst), 5.0)
    url = redis or rc.redis
    if not url:
        return MemoryState(window_s=window_s, revoked=revoked, pace=pace)
    password = store.resolve(rc.redis_password, context="relay.redis_password") if rc.redis_password else None
    return RedisState(url, relay_pki.state_key(store), password=password, window_s=window_s,
                      ota_dir=fl.state_dir / "ota",
                      revoked=revoked, pace=pace)
