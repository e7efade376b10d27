"""OIDC tokens on a device's behalf (authlib's OAuth 2 client on httpx).

Two shapes of credential, one class each, both built on `TokenSource`:

- `WeightronSource`: client_credentials grant (client id + secret), then
  `GET <access_url>` with `Authorization: Bearer` and `x-api-key` to find the Application ID
  (the MQTT username), skipping expired applications. MQTT password = the access token.
- `BiotzSource`: password grant (public client `biotz-platform-devices`, scope openid); the
  answer's **id_token** is what HTTP ingestion accepts as `Authorization: Bearer`.

What every source guarantees:

- Expiry is computed from the *local* clock at the moment the request was sent plus
  `expires_in` (never from the provider's clock, which may be off; the send time is no
  later than the moment the provider issued the token, so the estimate errs early).
- Refresh early: a cached token is replaced when less than `early_s` (capped at 10% of its
  lifetime) or the caller's `min_life` is left.
- Single-flight: concurrent callers that need a new token share one request to the provider.
- A refused refresh (`invalid_grant`, revoked session) falls back to logging in again.
- Tokens are never logged: the dataclasses hide them from repr, log lines carry the URL,
  the client id, the lifetime, never a token, secret or password.

This module knows nothing about the fleet file: it takes plain settings dataclasses
(`host_tools.tokens_cli` maps the fleet's models onto them).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import ssl
import time
import warnings
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import httpx

from host_tools.errors import ExitCode, UplinkError
from host_tools.relay_state import StoreDown

with warnings.catch_warnings():
    # authlib 1.9 announces it prefers "httpx2" (a fork); httpx is what this project pins and
    # what authlib still supports. Its notice is not the user's business: import it quietly.
    import authlib.deprecate  # noqa: F401  (sets authlib's own "always" filter first)

    warnings.simplefilter("ignore", DeprecationWarning)
    from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError

log = logging.getLogger("uplink.oidc")


class TokenError(UplinkError):
    """The provider refused or could not be reached; the message says where and why."""

    code = ExitCode.CLOUD


# -- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientCredentialsSettings:
    """Weightron-style: client_credentials grant, then the Application ID from /access."""

    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    scope: str | None = "openid"  # Weightron: "openid is required for all requests"
    api_key: str | None = field(default=None, repr=False)
    access_url: str | None = None
    application_id: str | None = None  # pin one application when the account has several
    ca: str | None = None  # CA bundle (PEM file) of a private provider; None: system store
    timeout_s: float = 10.0


@dataclass(frozen=True)
class PasswordSettings:
    """Biotz-style: password grant on a Keycloak realm; the id_token is the credential."""

    token_url: str
    client_id: str
    username: str
    password: str = field(repr=False)
    scope: str = "openid"
    client_secret: str | None = field(default=None, repr=False)
    ca: str | None = None
    timeout_s: float = 10.0


Settings = ClientCredentialsSettings | PasswordSettings


@dataclass
class Token:
    access_token: str = field(repr=False)
    token_type: str
    obtained_at: float  # local epoch seconds when the request was sent
    expires_at: float  # obtained_at + expires_in
    scope: str | None = None
    id_token: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    refresh_expires_at: float | None = None

    @property
    def lifetime(self) -> float:
        return self.expires_at - self.obtained_at

    def remaining(self, now: float | None = None) -> float:
        return self.expires_at - (time.time() if now is None else now)


@dataclass(frozen=True)
class Credential:
    """What a device gets: an MQTT/HTTP username and the secret that goes with it."""

    username: str
    password: str = field(repr=False)
    expires_at: float
    obtained_at: float
    kind: str  # "access_token" or "id_token": which token the password is


def _verify(ca: str | None):
    # TLS always verifies; a private provider's CA may be given, verification is never off.
    return ssl.create_default_context(cafile=ca) if ca else True


def _parse_expiry(value) -> float | None:
    """An /access `expiry`: epoch seconds, epoch milliseconds or an ISO 8601 string."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) / 1000.0 if value > 1e11 else float(value)
    if isinstance(value, str):
        try:
            d = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if d.tzinfo is None:
            d = d.replace(tzinfo=dt.timezone.utc)
        return d.timestamp()
    return None


# -- one credential's token, cached, single-flight -----------------------------------------


class TokenSource:
    """The token of one set of client settings. Share one instance between all its users."""

    def __init__(
        self,
        settings: Settings,
        *,
        early_s: float = 30.0,
        refetch_floor_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ):
        self.settings = settings
        self.early_s = early_s
        # a token younger than this is never replaced: it is as fresh as the provider makes
        # them, and asking again would only hammer it (e.g. when its lifetime < min_life)
        self.refetch_floor_s = refetch_floor_s
        self.clock = clock
        self.provider_calls = 0  # requests sent to the token endpoint
        self.memory_hits = 0  # tokens handed out from this process's cache
        self.shared_hits = 0  # ... from the replicas' shared cache
        self._token: Token | None = None
        self._inflight: asyncio.Task | None = None
        self._client: AsyncOAuth2Client | None = None
        # the secret goes in the form until the provider answers invalid_client to that,
        # then in HTTP Basic (_request): Weightron names both ways
        self._basic = False
        # set by the relay's state (host_tools/relay_state.py): the token cache and provider
        # lock shared by replicas, and the fleet-wide pacing of provider calls
        self.shared = None  # RedisTokens | None
        self.pacer: Callable[[], Awaitable[float]] | None = None
        self.cache_min_life = 0.0  # a shared token is dropped when it has this little left
        # a lock outlives the provider call it guards; replicas waiting wait at most this long
        self.lock_ttl_s = 2 * settings.timeout_s + 5

    # public ---------------------------------------------------------------------------
    @property
    def cached(self) -> Token | None:
        return self._token

    @property
    def cid(self) -> str:
        """This credential's name in the shared cache: a digest, never the user or secret."""
        s = self.settings
        ident = "\0".join((s.token_url, s.client_id, getattr(s, "username", "") or "", s.scope or ""))
        return hashlib.sha256(ident.encode()).hexdigest()[:32]

    async def token(self, min_life: float = 0.0, *, fresh: bool = False, sync: bool = False) -> Token:
        """A token with at least `min_life` seconds left (if the provider issues such).

        fresh=True: the current token was rejected by its consumer; get another (the caller
        rate-limits these: the relay allows one per `fresh_floor_s`).
        sync=True: take the shared cache's token if it is newer than ours (another replica
        forced a fresh one), waiting for a fetch in progress.
        """
        tok = self._token
        if tok is not None and not (sync and self.shared is not None) and self._good(tok, min_life, fresh):
            self.memory_hits += 1
            return tok
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(self._fetch(min_life, fresh, sync))
        task = self._inflight
        # shield: one caller giving up (timeout, disconnect) must not cancel the others' fetch
        return await asyncio.shield(task)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # internals ------------------------------------------------------------------------
    def _good(self, tok: Token, min_life: float, fresh: bool) -> bool:
        if fresh:  # the caller (the relay) rate-limits these itself
            return False
        now = self.clock()
        if now - tok.obtained_at < self.refetch_floor_s and tok.remaining(now) > 0:
            return True
        early = min(self.early_s, 0.1 * max(tok.lifetime, 0.0))
        return tok.remaining(now) >= max(min_life, early)

    def _http(self) -> AsyncOAuth2Client:
        if self._client is None:
            s = self.settings
            secret = getattr(s, "client_secret", None)
            self._client = AsyncOAuth2Client(
                client_id=s.client_id,
                client_secret=secret,
                scope=s.scope,
                # Weightron reads client_id/client_secret from the form (or HTTP Basic once
                # the form was refused); a public client (Biotz) sends only its client_id
                token_endpoint_auth_method=(
                    "none" if not secret else "client_secret_basic" if self._basic else "client_secret_post"
                ),
                timeout=s.timeout_s,
                verify=_verify(s.ca),
            )
        return self._client

    async def _fetch(self, min_life: float = 0.0, fresh: bool = False, sync: bool = False) -> Token:
        sh = self.shared
        if sh is not None and sh.up():
            try:
                return await self._fetch_shared(sh, min_life, fresh, sync)
            except StoreDown:
                pass  # Redis is down: this process's own token, from its memory or the provider
        tok = self._token
        if tok is not None and not fresh and self._good(tok, min_life, False):
            return tok
        return await self._fetch_provider()

    async def _fetch_shared(self, sh, min_life: float, fresh: bool, sync: bool) -> Token:
        """One replica asks the provider, the others take its token from the shared cache."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.lock_ttl_s
        cid = self.cid
        newer_than = self._token.obtained_at if (fresh and self._token is not None) else None
        forced = fresh  # the consumer refused our token: only a newer one will do
        if sync:
            await self._wait_unlocked(sh, cid, deadline)
        while True:
            tok = None if fresh else await sh.get(cid)
            if tok is not None:
                if self._token is None or tok.obtained_at >= self._token.obtained_at:
                    self._token = tok  # its refresh token is the newest too
                if self._good(tok, min_life, False) and (newer_than is None or tok.obtained_at > newer_than):
                    self.shared_hits += 1
                    return tok
            if loop.time() >= deadline:
                break
            owner = await sh.lock(cid, self.lock_ttl_s)
            if owner is not None:
                try:
                    return await self._fetch_and_share(sh, cid, forced)
                finally:
                    with contextlib.suppress(StoreDown):
                        await sh.unlock(cid, owner)
            # another replica is asking the provider: its token will be in the cache
            await self._wait_unlocked(sh, cid, deadline)
            if await sh.failed_recently(cid):  # its call failed: not one more call per replica
                raise TokenError(f"{self.settings.token_url}: the provider refused or failed another "
                                 "replica's request moments ago")
            fresh = False  # (a fresh request takes that token if it is newer than ours)
        return await self._fetch_provider()  # the lock holder never finished: ask ourselves

    async def _fetch_and_share(self, sh, cid: str, fresh: bool) -> Token:
        tok = None if fresh else await sh.get(cid)  # stored between our look and our lock?
        if tok is None or not self._good(tok, 0.0, False):
            try:
                tok = await self._fetch_provider()
            except TokenError:
                with contextlib.suppress(StoreDown):
                    await sh.mark_failed(cid, self.refetch_floor_s)
                raise
            ttl = tok.expires_at - self.clock() - self.cache_min_life
            with contextlib.suppress(StoreDown):
                # a token shorter than the minimum life stays refetch_floor_s, so the replicas
                # do not ask the provider again and again for one they cannot hand out
                await sh.put(cid, tok, max(ttl, self.refetch_floor_s))
        self._token = tok
        return tok

    async def _wait_unlocked(self, sh, cid: str, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() < deadline and await sh.locked(cid):
            await asyncio.sleep(0.05)

    async def _fetch_provider(self) -> Token:
        s = self.settings
        old = self._token
        if old is not None and old.refresh_token and (
            old.refresh_expires_at is None or old.refresh_expires_at > self.clock() + 5
        ):
            try:
                tok = await self._request("refresh", refresh_token=old.refresh_token)
                self._token = tok
                return tok
            except TokenError as e:
                # a refused refresh (session ended, token revoked): log in from scratch
                log.info("refresh refused by %s (%s); logging in again", s.token_url, e)
        tok = await self._request("login")
        self._token = tok
        return tok

    async def _request(self, what: str, refresh_token: str | None = None) -> Token:
        s = self.settings
        client = self._http()
        if self.pacer is not None:  # raises relay_state.Paced when the wait would be too long
            wait = await self.pacer()
            if wait > 0:
                await asyncio.sleep(wait)
        sent = self.clock()
        self.provider_calls += 1
        try:
            if refresh_token is not None:
                raw = await client.refresh_token(s.token_url, refresh_token=refresh_token)
            elif isinstance(s, PasswordSettings):
                raw = await client.fetch_token(
                    s.token_url, grant_type="password", username=s.username, password=s.password
                )
            else:
                raw = await client.fetch_token(s.token_url, grant_type="client_credentials")
        except OAuthError as e:
            if e.error == "invalid_client" and not self._basic and getattr(s, "client_secret", None):
                # the provider wants the secret in HTTP Basic (RFC 6749 2.3.1 names both): once
                log.info("%s refused the client secret in the form (invalid_client); "
                         "trying HTTP Basic client authentication", s.token_url)
                self._basic = True
                await self.aclose()
                return await self._request(what, refresh_token)
            raise TokenError(
                f"{s.token_url} refused the {what} for client {s.client_id!r}: "
                f"{e.error}{': ' + e.description if e.description else ''}"
            ) from None
        except httpx.HTTPStatusError as e:
            raise TokenError(
                f"{s.token_url} answered HTTP {e.response.status_code} to the {what}"
            ) from None
        except httpx.HTTPError as e:
            raise TokenError(f"cannot reach {s.token_url}: {type(e).__name__}: {e}") from None
        if not raw.get("access_token"):
            raise TokenError(f"{s.token_url} answered without an access_token")
        try:
            expires_in = float(raw.get("expires_in"))
        except (TypeError, ValueError):
            raise TokenError(f"{s.token_url} answered without a usable expires_in") from None
        refresh_in = raw.get("refresh_expires_in")
        tok = Token(
            access_token=raw["access_token"],
            token_type=str(raw.get("token_type", "Bearer")),
            obtained_at=sent,
            expires_at=sent + expires_in,
            scope=raw.get("scope"),
            id_token=raw.get("id_token"),
            refresh_token=raw.get("refresh_token"),
            refresh_expires_at=sent + float(refresh_in) if refresh_in else None,
        )
        log.info(
            "%s for client %r at %s: token valid %.0fs%s",
            what,
            s.client_id,
            s.token_url,
            expires_in,
            " (with id_token)" if tok.id_token else "",
        )
        return tok


class WeightronSource(TokenSource):
    """client_credentials token plus the Application ID it is for (the MQTT username)."""

    settings: ClientCredentialsSettings

    def __init__(self, settings: ClientCredentialsSettings, **kw):
        super().__init__(settings, **kw)
        self._app_id: str | None = None
        self._app_lock = asyncio.Lock()
        self.access_calls = 0

    async def application_id(self) -> str:
        if self._app_id is not None:
            return self._app_id
        async with self._app_lock:  # single-flight for the lookup too
            if self._app_id is None:
                self._app_id = await self._lookup_application()
        return self._app_id

    async def _lookup_application(self) -> str:
        s = self.settings
        if s.application_id:
            # pinned: /access would only confirm it, and costs a token and a round trip
            return s.application_id
        if not s.access_url:
            if not s.application_id:
                raise TokenError("neither access_url nor application_id is set")
            return s.application_id
        if not s.api_key:
            raise TokenError(f"{s.access_url} needs an API key (x-api-key); none is set")
        tok = await self.token()
        resp = await self._get_access(tok)
        if resp.status_code == 401:  # the token was refused: one fresh token, one retry
            resp = await self._get_access(await self.token(fresh=True))
        if resp.status_code != 200:
            raise TokenError(f"{s.access_url} answered HTTP {resp.status_code}")
        try:
            apps = resp.json()["data"]
        except (ValueError, KeyError, TypeError):
            raise TokenError(f"{s.access_url} answered without a data list") from None
        now = self.clock()
        live, expired = [], []
        for app in apps if isinstance(apps, list) else []:
            if not isinstance(app, dict) or not app.get("_id"):
                continue
            exp = _parse_expiry(app.get("expiry"))
            (expired if exp is not None and exp <= now else live).append(app)
        if s.application_id:
            for app in live:
                if app["_id"] == s.application_id:
                    return s.application_id
            why = "expired" if any(a["_id"] == s.application_id for a in expired) else "not listed"
            raise TokenError(f"application {s.application_id!r} is {why} at {s.access_url}")
        if not live:
            raise TokenError(
                f"{s.access_url} lists no unexpired application ({len(expired)} expired)"
            )
        if len(live) > 1:
            names = ", ".join(f"{a['_id']} ({a.get('name', '?')})" for a in live)
            raise TokenError(f"several applications are live, set application_id to one of: {names}")
        return str(live[0]["_id"])

    async def _get_access(self, tok: Token) -> httpx.Response:
        s = self.settings
        assert s.access_url and s.api_key
        self.access_calls += 1
        try:
            return await self._http().get(
                s.access_url,
                headers={"Authorization": f"Bearer {tok.access_token}", "x-api-key": s.api_key},
                # the OAuth client would otherwise attach its own token state
                auth=None,
            )
        except httpx.HTTPError as e:
            raise TokenError(f"cannot reach {s.access_url}: {type(e).__name__}: {e}") from None

    async def credential(self, min_life: float = 0.0, *, fresh: bool = False, sync: bool = False) -> Credential:
        app = await self.application_id()
        tok = await self.token(min_life, fresh=fresh, sync=sync)
        return Credential(app, tok.access_token, tok.expires_at, tok.obtained_at, "access_token")


class BiotzSource(TokenSource):
    """Password grant; the credential's password is the id_token (Bearer for ingestion)."""

    settings: PasswordSettings

    async def credential(self, min_life: float = 0.0, *, fresh: bool = False, sync: bool = False) -> Credential:
        tok = await self.token(min_life, fresh=fresh, sync=sync)
        if not tok.id_token:
            raise TokenError(
                f"{self.settings.token_url} answered without an id_token (is 'openid' in the scope?)"
            )
        return Credential(
            self.settings.username, tok.id_token, tok.expires_at, tok.obtained_at, "id_token"
        )


def source_for(settings: Settings, **kw) -> WeightronSource | BiotzSource:
    if isinstance(settings, PasswordSettings):
        return BiotzSource(settings, **kw)
    return WeightronSource(settings, **kw)
