"""`uplink relay`: hands devices fresh platform credentials over HTTPS on the LAN.

Client secrets (Weightron's client secret, Biotz's password) stay on the machine running the
relay; a board only holds its own relay key, which is worth nothing anywhere else.

Protocol (one endpoint)::

    GET /v1/credentials[?fresh=1]
    X-Uplink-Device:    <device name>
    X-Uplink-Time:      <unix seconds, the board's NTP clock>
    X-Uplink-Nonce:     <8..64 characters [0-9A-Za-z_-], new for every request>
    X-Uplink-Signature: hex HMAC-SHA256(device key, "GET\\n<path with query>\\n<device>\\n<time>\\n<nonce>")
    X-Uplink-Key-Id:    <8 hex: sha256(key)[:8]>  (optional; then "\\n<key id>" ends the signed text)

    200 {"username": .., "password": .., "expires_at": <unix s>, "expires_in": <s>}
        (+ "ota": {"version", "size", "sha256"} while `uplink ota` has a bundle for the device)
    401 {"error": "unauthorized"}   unknown device, bad signature, stale time, replayed nonce
    503 {"error": "unavailable"}    the provider failed or gives tokens shorter than min_life_s;
                                    with Retry-After: the replay store (Redis) is down, or
                                    provider calls are paced

- The signature covers method, path (with query), device, time and nonce. A request is
  accepted only within `max_skew_s` of the relay's clock, and its nonce is remembered for
  that window: a captured request cannot be replayed, neither later nor right away.
- Every refusal is the same bare 401, so a prober learns nothing about which part failed;
  the reason goes to the audit log only.
- Never hands out a credential with less than `min_life_s` left: the token source refreshes
  early, and if even a fresh token is shorter the answer is 503.
- Devices that share provider settings share one `TokenSource`, whose single-flight makes
  100 concurrent requests one provider call. `?fresh=1` (the consumer refused the token)
  forces a new token at most once per `fresh_floor_s` per source.
- One audit line per request (logger `uplink.relay.audit`): peer, device, path, status,
  reason, username and remaining lifetime. Never the password/token or the signature.

Server library: aiohttp's web server. It is asyncio-native (the token sources and their
single-flight are asyncio, so requests waiting for one token fetch cost a coroutine each,
not a thread), mature and widely deployed, does TLS through the standard `ssl` module,
limits request sizes, and it is already a pinned dependency of this project. A WSGI
server (werkzeug/Flask) would need a thread per waiting request and a bridge into asyncio.
This module takes plain settings (`RelaySettings`, `RelayDevice`); `host_tools.tokens_cli`
builds them from the fleet file.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import logging
import os
import re
import secrets
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol

from aiohttp import web

from host_tools.oidc import Credential, TokenError
from host_tools.relay_conns import BACKLOG, CONN_KEY, Gate, HttpLog, TLSConn, freeze_heap
from host_tools.relay_keys import KID_RE, RELOAD_FLOOR_S, DeviceKey, key_id
from host_tools.relay_state import MemoryState, Paced, StoreDown

log = logging.getLogger("uplink.relay")
audit = logging.getLogger("uplink.relay.audit")

PATH = "/v1/credentials"
OTA_PATH = "/v1/ota"  # the device's OTA bundle, signed like PATH (docs/ota.md)
_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_TIME_RE = re.compile(r"^[0-9]{1,12}$")
_SIG_RE = re.compile(r"^[0-9a-fA-F]{64}$")
AUDIT = web.RequestKey("audit", dict)  # what the audit line of this request will say


class CredentialSource(Protocol):
    async def credential(self, min_life: float = 0.0, *, fresh: bool = False, sync: bool = False) -> Credential: ...


@dataclass
class RelayDevice:
    name: str
    key: str = field(repr=False)  # hex: the current key
    source: CredentialSource = field(repr=False)
    prev: DeviceKey | None = field(default=None, repr=False)  # a rotated key in its grace period

    def keys(self, now: float, kid: str | None) -> list[str]:
        """The keys a request may be signed with: the one its key id names, else (a device
        without key ids) the current one, then the previous while its grace lasts."""
        out = [DeviceKey(self.key)]
        if self.prev is not None and self.prev.valid(now):
            out.append(self.prev)
        return [k.key for k in out if kid is None or k.kid == kid]


@dataclass
class RelaySettings:
    cert_pem: Path
    key_pem: Path
    host: str = "0.0.0.0"
    port: int = 8443
    min_life_s: float = 60.0
    max_skew_s: float = 30.0
    fresh_floor_s: float = 10.0
    max_nonces_per_device: int = 4096
    # connection limits (docs/relay.md, "Floods"): open connections in all and per client
    # address; the total is lowered at start to what the open-file limit leaves room for
    max_connections: int = 1000
    max_per_address: int = 64
    handshake_timeout_s: float = 5.0  # TCP accept -> TLS handshake done
    header_timeout_s: float = 10.0  # accept (or the end of the last answer) -> request headers in
    stats_log_interval_s: float = 60.0  # at most one line of refusal/timeout counts per interval
    ota_dir: Path | None = None  # `uplink ota DEVICE` leaves <device>.uplb here (GET /v1/ota)
    # balancers (addresses or networks) whose PROXY protocol v2 header names the client
    trusted_proxies: tuple[str, ...] = ()
    # /healthz, /readyz, /metrics on their own plain-HTTP listener (host_tools/relay_admin.py)
    admin_host: str = "127.0.0.1"
    admin_port: int | None = None  # None: no admin listener; 0: a free port
    replica_id: str = field(default_factory=lambda: f"{socket.gethostname()[:32]}-{os.getpid()}")


def canonical(method: str, path: str, device: str, ts: str, nonce: str, kid: str | None = None) -> bytes:
    parts = (method.upper(), path, device, ts, nonce) + ((kid,) if kid is not None else ())
    return "\n".join(parts).encode()


def sign(key_hex: str, method: str, path: str, device: str, ts: str, nonce: str,
         kid: str | None = None) -> str:
    # hmac.digest: OpenSSL's one-shot HMAC, a third of hmac.new()'s cost per request
    return hmac.digest(
        bytes.fromhex(key_hex), canonical(method, path, device, ts, nonce, kid), "sha256"
    ).hex()


def sign_headers(
    device: str, key_hex: str, method: str = "GET", path: str = PATH, *,
    now: float | None = None, nonce: str | None = None, kid: bool = False,
) -> dict:
    """The headers a device sends (host-side twin of firmware/uplink/credentials.py); with
    kid=True the key id too, inside the signature."""
    ts = str(int(time.time() if now is None else now))
    nonce = nonce or secrets.token_hex(8)
    key_id_ = key_id(key_hex) if kid else None
    h = {
        "X-Uplink-Device": device,
        "X-Uplink-Time": ts,
        "X-Uplink-Nonce": nonce,
        "X-Uplink-Signature": sign(key_hex, method, path, device, ts, nonce, key_id_),
    }
    if key_id_ is not None:
        h["X-Uplink-Key-Id"] = key_id_
    return h


class Relay:
    def __init__(
        self,
        settings: RelaySettings,
        devices: list[RelayDevice],
        *,
        clock: Callable[[], float] = time.time,
        state=None,
        key_loader: Callable[[str], Awaitable[list[DeviceKey]]] | None = None,
    ):
        self.settings = settings
        self.devices = {d.name: d for d in devices}
        self.clock = clock
        self.key_loader = key_loader  # a device's keys as they are now (host_tools/relay_keys.py)
        self._missing_warned: dict[str, str] = {}  # device -> the offer whose bundle was missing
        self._blobs_checked: dict[Path, tuple] = {}  # bundles whose sha256 matched, by stat
        self._reloaded: dict[str, float] = {}
        # nonces, revocations, the fresh floor, pacing; token cache and lock when shared
        self.state = state or MemoryState(window_s=settings.max_skew_s,
                                          max_nonces_per_device=settings.max_nonces_per_device)
        for d in devices:
            if hasattr(d.source, "shared"):  # a TokenSource (tests may pass other sources)
                src: Any = d.source
                src.shared = self.state.tokens()
                src.pacer = self.state.pace
                src.cache_min_life = settings.min_life_s
        self._runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None
        self.gate: Gate | None = None
        self.port: int | None = None
        self.requests = 0
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(3)  # request ids stay unique across restarts
        self.metrics = _metrics(self)
        self.admin: Any = None
        self.app = web.Application(middlewares=[self._audit_mw], client_max_size=4096)
        self.app.router.add_get(PATH, self._credentials)
        self.app.router.add_get(OTA_PATH, self._ota)

    # -- TLS and lifecycle --------------------------------------------------------------
    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.settings.cert_pem), str(self.settings.key_pem))
        return ctx

    async def start(self) -> int:
        """Listen; returns the port (settings.port 0 picks a free one).

        A plain TCP server whose protocol is the gate's TLSConn (caps, timeouts; see
        host_tools/relay_conns.py) wrapping aiohttp's request handler, instead of TCPSite."""
        st = self.settings
        self.gate = gate = Gate(
            max_connections=st.max_connections, max_per_address=st.max_per_address,
            handshake_timeout_s=st.handshake_timeout_s, header_timeout_s=st.header_timeout_s,
            stats_log_interval_s=st.stats_log_interval_s, trusted_proxies=tuple(st.trusted_proxies),
        )
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False,
            keepalive_timeout=2 * st.header_timeout_s,  # the gate's deadline comes first
            logger=HttpLog(gate),  # malformed requests: counted, not a traceback each
        )
        await self._runner.setup()
        await self.state.start()
        handler_factory = self._runner.server
        assert handler_factory is not None
        ctx = self.ssl_context()
        loop = asyncio.get_running_loop()
        gate.start(loop)
        self._server = await loop.create_server(
            lambda: TLSConn(gate, handler_factory(), ctx, loop),
            st.host, st.port, backlog=BACKLOG, reuse_address=True,
        )
        socks = self._server.sockets
        self.port = int(socks[0].getsockname()[1]) if socks else st.port
        if st.admin_port is not None:
            from host_tools.relay_admin import Admin

            self.admin = Admin(self, st.admin_host, st.admin_port)
            await self.admin.start()
        log.info("relay listening on https://%s:%s%s for %d device(s); up to %d connections, "
                 "%d per address (open-file limit %d)",
                 st.host, self.port, PATH, len(self.devices), gate.max_connections,
                 gate.max_per_address, gate.file_limit)
        return self.port

    async def stop(self) -> None:
        if self.admin is not None:
            await self.admin.stop()
            self.admin = None
        if self._server is not None:
            self._server.close()
            self._server = None
        if self.gate is not None:
            await self.gate.stop()  # closes the connections still open
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def serve_forever(self) -> None:
        await self.start()
        freeze_heap()  # no 10-30 ms full GC passes over startup objects between requests
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()
            await self.state.close()

    # -- request handling ---------------------------------------------------------------
    @web.middleware
    async def _audit_mw(self, request: web.Request, handler):
        t0 = time.perf_counter()
        rid = f"{self._id_prefix}{next(self._ids):x}"
        info: dict = {"device": "-", "reason": "-"}
        request[AUDIT] = info
        status = 500
        tr = request.transport
        conn = tr.get_extra_info(CONN_KEY) if tr is not None else None
        if conn is not None:
            conn.gate.busy(conn)  # headers are in: no deadline while it is answered
        try:
            resp = await handler(request)
            status = resp.status
            resp.headers["X-Request-Id"] = rid  # what a support question quotes
            return resp
        except web.HTTPException as e:
            status = e.status
            if status == 404:
                info["reason"] = "no-such-path"
            raise
        finally:
            if conn is not None:
                conn.gate.done(conn, asyncio.get_running_loop().time())
            self.requests += 1
            extra = ""
            if "username" in info:
                extra = f" user={info['username']} expires_in={info['expires_in']}"
            took = time.perf_counter() - t0
            audit.info(
                "replica=%s req=%s peer=%s device=%s method=%s path=%s status=%d reason=%s%s ms=%.1f",
                self.settings.replica_id, rid, request.remote or "-", info["device"], request.method,
                _printable(request.rel_url.path), status, info["reason"], extra, took * 1000,
            )
            if self.metrics is not None:
                route = request.path if request.path in (PATH, OTA_PATH) else "other"
                self.metrics.observe(route, status, info["reason"], took)

    def _deny(self, request: web.Request, reason: str, status: int = 401,
              retry_after: int | None = None) -> web.Response:
        request[AUDIT]["reason"] = reason
        body = {401: "unauthorized", 429: "too many requests", 503: "unavailable"}[status]
        headers = {"Cache-Control": "no-store"}
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        return web.json_response({"error": body}, status=status, headers=headers)

    async def _check(self, request: web.Request) -> tuple[RelayDevice | None, web.Response | None]:
        """The signed device of a request, or the refusal to answer with."""
        info = request[AUDIT]
        h = request.headers
        device = h.get("X-Uplink-Device", "")
        ts = h.get("X-Uplink-Time", "")
        nonce = h.get("X-Uplink-Nonce", "")
        sig = h.get("X-Uplink-Signature", "")
        kid = h.get("X-Uplink-Key-Id")
        if not _NAME_RE.match(device):
            return None, self._deny(request, "bad-device-header")
        info["device"] = device
        if not (_TIME_RE.match(ts) and _NONCE_RE.match(nonce) and _SIG_RE.match(sig)
                and (kid is None or KID_RE.match(kid))):
            return None, self._deny(request, "malformed-auth-headers")
        dev = self.devices.get(device)
        now = self.clock()
        if dev is None:
            # unknown devices cost the same HMAC as known ones: timing tells nothing
            sign("00" * 32, request.method, request.raw_path, device, ts, nonce, kid)
            return None, self._deny(request, "unknown-device")
        signed = (request.method, request.raw_path, device, ts, nonce, kid)
        if not _verify(dev.keys(now, kid), sig, signed):
            # a key rotated since this relay loaded it? (at most once per RELOAD_FLOOR_S)
            if not (await self._reload_keys(dev, now) and _verify(dev.keys(now, kid), sig, signed)):
                return None, self._deny(request, "bad-signature")
        if abs(now - int(ts)) > self.settings.max_skew_s:
            return None, self._deny(request, "stale-timestamp")
        try:  # one round trip on Redis: revoked set, nonce, store epoch, the OTA offer
            why, info["ota"] = await self.state.admit(device, nonce, int(ts), now)
        except StoreDown as e:
            # no replay check, no answer: the device backs off and asks again
            return None, self._deny(request, "replay-store-down", 503, e.retry_after)
        if why == "too-many-requests":
            return None, self._deny(request, why, 429)
        if why == "signed-before-store-epoch":  # a new request (new time) will pass
            return None, self._deny(request, why, 503, 1)
        if why:
            return None, self._deny(request, why)
        return dev, None

    async def _reload_keys(self, dev: RelayDevice, now: float) -> bool:
        """Fetch `dev`'s keys again (`uplink relay rotate` made a new one); True if they changed."""
        if self.key_loader is None or now - self._reloaded.get(dev.name, float("-inf")) < RELOAD_FLOOR_S:
            return False
        self._reloaded[dev.name] = now
        try:
            keys = await self.key_loader(dev.name)
        except Exception as e:  # the store is down or damaged: the keys held stay
            log.warning("device %s: could not reload its keys: %s: %s", dev.name, type(e).__name__, e)
            return False
        cur = next((k for k in keys if k.until is None), None)
        prev = next((k for k in keys if k.until is not None), None)
        if cur is None or (cur.key == dev.key and prev == dev.prev):
            return False
        if cur.key != dev.key:
            log.info("device %s: key %s is current now", dev.name, cur.kid)
        dev.key, dev.prev = cur.key, prev
        return True

    async def _ota(self, request: web.Request) -> web.StreamResponse:
        """The bundle `uplink ota` left for this device (Range answered by aiohttp), its
        sha256 and version in the headers Blynk.Air uses (x-sha256 base64, x-fw-ver); 204
        when there is none."""
        dev, denied = await self._check(request)
        if dev is None:
            assert denied is not None
            return denied
        offer = self._ota_offer(dev.name, request[AUDIT].get("ota"))
        if offer is None:
            request[AUDIT]["reason"] = "no-bundle"
            return web.Response(status=204, headers={"Cache-Control": "no-store"})
        path, sha, ver = offer
        request[AUDIT]["reason"] = f"bundle-{_printable(str(ver))}"
        return web.FileResponse(path, headers={"x-sha256": base64.b64encode(sha).decode(), "x-fw-ver": str(ver),
                                               "Cache-Control": "no-store"})

    def _ota_offer(self, device: str, shared: str | None = None) -> tuple[Path, bytes, str] | None:
        """(bundle, sha256, version) `uplink ota` offers `device`, or None. The offer comes from
        Redis (`shared`, read with the nonce) for replicas, else from the state directory; the
        bundle is content-addressed there, and an offer whose bundle this replica cannot read
        (storage not synced yet) is not made."""
        d = self.settings.ota_dir
        if d is None:
            return None
        if self.state.shared:
            raw = shared
        else:
            try:
                raw = (d / f"{device}.offer").read_text()
            except OSError:
                return _legacy_offer(d, device)
        if not raw:
            return None
        try:
            o = json.loads(raw)
            sha, ver, size = str(o["sha256"]), str(o["version"]), int(o["size"])
            path = d / "sha256" / f"{bytes.fromhex(sha).hex()}.uplb"
        except (ValueError, KeyError, TypeError):
            return None
        if not self._blob_ok(path, sha, size):
            if self._missing_warned.get(device) != sha:
                self._missing_warned[device] = sha
                log.warning("device %s: offered bundle %s (%s) is not on this replica's storage "
                            "(%s): not offered here yet", device, sha[:12], _printable(ver), path)
            return None
        return path, bytes.fromhex(sha), ver

    def _blob_ok(self, path: Path, sha: str, size: int) -> bool:
        """The content-addressed bundle is here, whole: its size, and its sha256 once per
        version of the file (a half-synced copy of the right size is not offered either)."""
        try:
            st = path.stat()
        except OSError:
            return False
        sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self._blobs_checked.get(path) == sig:
            return True
        if st.st_size != size:
            return False
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            return False
        if digest != sha.lower():
            return False
        self._blobs_checked[path] = sig
        return True

    async def _credentials(self, request: web.Request) -> web.Response:
        info = request[AUDIT]
        dev, denied = await self._check(request)
        if dev is None:
            assert denied is not None
            return denied
        device = dev.name
        now = self.clock()
        # (the query string is parsed only when there is one: most requests have none)
        fresh = sync = bool(request.query_string) and request.query.get("fresh") == "1"
        if fresh:
            cid = getattr(dev.source, "cid", None) or str(id(dev.source))
            # someone forced a new token moments ago (on any replica): that one is it
            fresh = await self.state.fresh_allowed(cid, self.settings.fresh_floor_s, now)
        min_life = self.settings.min_life_s
        try:
            cred = await dev.source.credential(min_life, fresh=fresh, sync=sync and not fresh)
        except Paced as e:
            log.warning("device %s: %s", device, e)
            return self._deny(request, "provider-paced", 503, e.retry_after)
        except TokenError as e:
            log.warning("device %s: no credential: %s", device, e)
            return self._deny(request, "provider-error", 503)
        except Exception as e:  # a bug or an odd answer: the device retries, the relay lives on
            log.error("device %s: no credential: %s: %s", device, type(e).__name__, e)
            return self._deny(request, "internal-error", 503)
        left = cred.expires_at - self.clock()
        if left < min_life:
            log.warning("device %s: the provider's token lives %.0fs, below min_life_s=%.0fs",
                        device, cred.expires_at - cred.obtained_at, min_life)
            return self._deny(request, "token-too-short", 503)
        info.update(reason="fresh" if fresh else "ok", username=cred.username,
                    expires_in=int(left))
        answer = {"username": cred.username, "password": cred.password,
                  "expires_at": int(cred.expires_at), "expires_in": int(left)}
        offer = self._ota_offer(device, info.get("ota"))
        if offer is not None:
            # the device learns of an update with the token it fetches at boot anyway: no
            # second request (and TLS session) per boot just to hear "nothing" (docs/ota.md)
            path, sha, ver = offer
            answer["ota"] = {"version": ver, "size": path.stat().st_size, "sha256": sha.hex()}
        return web.json_response(answer, headers={"Cache-Control": "no-store"})


def _legacy_offer(d: Path, device: str) -> tuple[Path, bytes, str] | None:
    """An offer left by `uplink ota` before bundles were content-addressed:
    <device>.uplb and its .sha256 (a single relay's state directory)."""
    path = d / f"{device}.uplb"
    try:
        sha = bytes.fromhex(path.with_name(path.name + ".sha256").read_text().split()[0])
        with path.open("rb") as f:
            ver = json.loads(f.readline(8192)).get("version")
    except (OSError, ValueError, IndexError):
        return None
    return path, sha, str(ver)


def _verify(keys: list[str], sig: str, signed: tuple) -> bool:
    sig = sig.lower()
    return any(hmac.compare_digest(sign(k, *signed), sig) for k in keys)


def _metrics(relay: "Relay"):
    """Prometheus counters, or None without prometheus_client (the embedded relay)."""
    try:
        from host_tools.relay_admin import Metrics

        return Metrics(relay)
    except ImportError:
        return None


_UNPRINTABLE = re.compile(r"[^\x21-\x7e]")


def _printable(s: str) -> str:
    return _UNPRINTABLE.sub("?", s[:128])
