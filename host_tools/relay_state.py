"""Where the token relay keeps what must hold across requests: replay nonces, revoked devices,
the `?fresh=1` floor, the token cache, the provider's single-flight lock and its pacing.

Two stores behind one interface (docs/relay.md, "Replicas on Redis"):

- `MemoryState` (the default): one process, as the relay always was.
- `RedisState` (`uplink relay --redis redis://HOST:PORT/DB`): N replicas share one Redis.
  A request's checks are one round trip (a Lua script: revoked set, `SET nonce NX PX`, the
  store's epoch). Tokens are cached AES-GCM encrypted under a key from the relay's secrets,
  with a TTL of their expiry minus the minimum life; one replica at a time asks the provider
  (a lock with a TTL, released by compare-and-delete); provider calls are paced fleet-wide by
  a token bucket.

Redis down: `admit` raises `StoreDown` (the relay answers 503 + Retry-After: replay protection
never degrades), while tokens, the fresh floor and pacing fall back to this process's memory.
After a failure the store is not asked again for `retry_s`, so an outage costs each request
nothing. A Redis that comes back empty has lost its nonces: the first replica to see it
stamps a new epoch, and requests signed before it are refused, so a request captured before
the outage cannot be replayed after it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import secrets
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # host_tools.oidc imports this module (StoreDown, Paced)
    from host_tools.oidc import Token

log = logging.getLogger("uplink.relay")

PREFIX = "uplink:relay:"
_EPOCH = PREFIX + "epoch"
_REVOKED = PREFIX + "revoked"
_PACE = PREFIX + "pace"


class StoreDown(Exception):
    """The shared store did not answer; `retry_after` seconds is when to ask again."""

    def __init__(self, retry_after: int):
        super().__init__(f"shared store down, retry in {retry_after}s")
        self.retry_after = retry_after


class Paced(Exception):
    """The fleet-wide provider budget is spent for longer than a request should wait."""

    def __init__(self, retry_after: float):
        super().__init__(f"provider calls paced, retry in {retry_after:.0f}s")
        self.retry_after = max(1, math.ceil(retry_after))


# -- pacing: a token bucket per replica (memory) or per fleet (Redis) ----------------------


class LocalBucket:
    """`rate` provider calls per second with bursts of `burst`; a caller waits its turn, or
    is told to come back (Paced) when that would take longer than `max_wait_s`."""

    def __init__(self, rate: float, burst: float, max_wait_s: float, clock=time.monotonic):
        self.rate, self.burst, self.max_wait_s, self.clock = rate, burst, max_wait_s, clock
        self.tokens = burst
        self.ts = clock()

    def reserve(self) -> float:
        now = self.clock()
        tokens = min(self.burst, self.tokens + (now - self.ts) * self.rate) - 1
        wait = -tokens / self.rate if tokens < 0 else 0.0
        if wait > self.max_wait_s:
            raise Paced(wait)
        self.tokens, self.ts = tokens, now
        return wait


# -- the token cache's value: encrypted at rest ---------------------------------------------


class TokenCodec:
    """A Token as AES-256-GCM ciphertext, bound to its cache key (the AAD): a value copied
    under another credential's key does not decrypt."""

    def __init__(self, key: bytes):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(hashlib.sha256(b"uplink-relay-token-cache\0" + key).digest())

    def seal(self, cid: str, tok: Token) -> bytes:
        from host_tools.oidc import Token

        body = json.dumps({k: getattr(tok, k) for k in Token.__dataclass_fields__}).encode()
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, body, cid.encode())

    def seal_bytes(self, aad: str, body: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, body, aad.encode())

    def open_bytes(self, aad: str, blob: bytes) -> bytes | None:
        from cryptography.exceptions import InvalidTag

        try:
            return self._aead.decrypt(blob[:12], blob[12:], aad.encode())
        except (InvalidTag, ValueError):
            return None

    def open(self, cid: str, blob: bytes) -> Token | None:
        from cryptography.exceptions import InvalidTag

        from host_tools.oidc import Token

        try:
            return Token(**json.loads(self._aead.decrypt(blob[:12], blob[12:], cid.encode())))
        except (InvalidTag, ValueError, TypeError):
            log.warning("relay: a cached token did not decrypt (other state key?): ignored")
            return None


# -- the revoked devices: a file on the state storage every replica reads -------------------


class RevokedFile:
    """`uplink relay revoke DEVICE` writes here (0600); it outlives a Redis that restarts
    empty, which is re-seeded from it. Re-read when its mtime changes (at most once a second)."""

    def __init__(self, path: Path | None):
        self.path = path
        self._mtime: float | None = None
        self._checked = 0.0
        self.devices: frozenset[str] = frozenset()
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> frozenset[str]:
        now = time.monotonic()
        if self.path is None or (not force and now - self._checked < 1.0):
            return self.devices
        self._checked = now
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self.devices, self._mtime = frozenset(), None
            return self.devices
        if mtime != self._mtime:
            self._mtime = mtime
            self.devices = frozenset(json.loads(self.path.read_text() or "[]"))
        return self.devices

    def write(self, devices: set[str]) -> None:
        assert self.path is not None
        from host_tools.private_dir import private_file

        with private_file(self.path) as f:
            f.write((json.dumps(sorted(devices)) + "\n").encode())
        self.refresh(force=True)


# -- the stores ------------------------------------------------------------------------------


class MemoryState:
    """One process: what the relay kept before replicas existed."""

    shared = False
    name = "memory"

    def __init__(self, *, window_s: float = 30.0, max_nonces_per_device: int = 4096,
                 revoked: RevokedFile | None = None, pace: tuple[float, float, float] = (50.0, 100.0, 5.0)):
        self.window_s = window_s
        self.cap = max_nonces_per_device
        self._seen: dict[str, OrderedDict[str, float]] = {}
        self._last_fresh: dict[str, float] = {}
        self.revoked = revoked or RevokedFile(None)
        self.bucket = LocalBucket(*pace)
        self.errors = 0

    async def admit(self, device: str, nonce: str, ts: int, now: float) -> tuple[str | None, str | None]:
        """Record a request's nonce: (a reason when it must be refused, the shared OTA offer:
        always None here, the relay reads the state directory)."""
        return self._admit(device, nonce, now), None

    def _admit(self, device: str, nonce: str, now: float) -> str | None:
        if device in self.revoked.refresh():
            return "revoked-device"
        seen = self._seen.setdefault(device, OrderedDict())
        while seen:  # forget nonces whose requests could no longer pass the time check
            first, t = next(iter(seen.items()))
            if now - t <= 2 * self.window_s:
                break
            del seen[first]
        if nonce in seen:
            return "replayed-nonce"
        if len(seen) >= self.cap:
            return "too-many-requests"
        seen[nonce] = now
        return None

    async def fresh_allowed(self, cid: str, floor_s: float, now: float) -> bool:
        if now - self._last_fresh.get(cid, float("-inf")) < floor_s:
            return False
        self._last_fresh[cid] = now
        return True

    async def pace(self) -> float:
        return self.bucket.reserve()

    def tokens(self) -> None:
        return None  # no shared token cache: each TokenSource's own is the cache

    async def ready(self) -> bool:
        return True

    async def start(self) -> None:
        pass

    async def revoke(self, device: str, revoked: bool = True) -> None:
        devs = set(self.revoked.refresh(force=True))
        (devs.add if revoked else devs.discard)(device)
        self.revoked.write(devs)

    async def put_keys(self, device: str, keys: list) -> None:
        pass  # one process: it reads the secret store itself

    async def get_keys(self, device: str) -> list:
        return []

    async def close(self) -> None:
        pass


# KEYS: the nonce, the revoked set, the epoch, the device's OTA offer; ARGV: device, nonce TTL
_ADMIT = """
local epoch = redis.call('GET', KEYS[3])
if not epoch then return {'new', '0', false} end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return {'revoked', epoch, false} end
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[2]) then return {'replay', epoch, false} end
return {'ok', epoch, redis.call('GET', KEYS[4])}
"""

# KEYS[1]: the bucket; ARGV: rate per s, burst, longest wait in ms. Returns the ms to wait
# (the call is reserved), or -(ms) when that is over the longest wait (nothing reserved).
_PACE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate, burst, max_wait = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local v = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(v[1]) or burst
local ts = tonumber(v[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000) - 1
local wait = 0
if tokens < 0 then wait = math.ceil(-tokens * 1000 / rate) end
if wait > max_wait then return -wait end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 60000)
return wait
"""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisState:
    """N replicas on one Redis (redis-py's asyncio client; hiredis parses when installed)."""

    shared = True
    name = "redis"

    def __init__(self, url: str, state_key: bytes, *, password: str | None = None, window_s: float = 30.0,
                 ota_dir: Path | None = None,
                 revoked: RevokedFile | None = None, pace: tuple[float, float, float] = (50.0, 100.0, 5.0),
                 timeout_s: float = 2.0, retry_s: float = 1.0, clock: Callable[[], float] = time.time):
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError:
            from host_tools.errors import UplinkError

            raise UplinkError("relay: --redis needs redis-py: pip install 'uplink-host-tools[relay]'") from None

        # one retry at once on a new connection (a pooled one may be from before a Redis
        # restart), then the failure is reported and the relay decides: 503 for replay
        # checks, memory for tokens
        # a blocking pool: at 64 calls in flight the next waits for a connection (up to the
        # timeout) instead of failing with "Too many connections" and a 503
        pool = aioredis.BlockingConnectionPool.from_url(
            url, password=password, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            max_connections=64, timeout=timeout_s, retry=Retry(NoBackoff(), 1))
        self.r = aioredis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 1))
        self.url_for_log = _redacted(url)
        self.window_s = window_s
        self.retry_s = retry_s
        self.clock = clock
        self.revoked = revoked or RevokedFile(None)
        self.ota_dir = ota_dir  # offers there are re-seeded into an empty Redis
        self.codec = TokenCodec(state_key)
        self.local = MemoryState(window_s=window_s, revoked=self.revoked, pace=pace)
        self.pace_args = (pace[0], pace[1], int(pace[2] * 1000))
        self._admit = self.r.register_script(_ADMIT)
        self._pace = self.r.register_script(_PACE_LUA)
        self._unlock = self.r.register_script(_UNLOCK)
        self.down_until = 0.0
        self.errors = 0  # calls that failed (metrics)
        self.was_down = False

    # -- failure bookkeeping ---------------------------------------------------------------
    def up(self) -> bool:
        return time.monotonic() >= self.down_until

    def _failed(self, e: Exception) -> None:
        self.errors += 1
        if not self.was_down:
            log.warning("relay: Redis at %s failed (%s: %s): replay checks answer 503, tokens "
                        "come from this replica's memory until it answers", self.url_for_log,
                        type(e).__name__, e)
        self.was_down = True
        self.down_until = time.monotonic() + self.retry_s

    def _ok(self) -> None:
        if self.was_down:
            log.warning("relay: Redis at %s answers again", self.url_for_log)
            self.was_down = False

    async def call(self, fn, *args, **kw) -> Any:
        """One Redis call; RedisError (and timeouts) mark the store down for retry_s."""
        from redis.exceptions import RedisError

        if not self.up():
            raise StoreDown(math.ceil(self.down_until - time.monotonic()) or 1)
        try:
            out = await fn(*args, **kw)
        except (RedisError, OSError, asyncio.TimeoutError) as e:
            self._failed(e)
            raise StoreDown(math.ceil(self.retry_s)) from None
        self._ok()
        return out

    # -- requests --------------------------------------------------------------------------
    async def admit(self, device: str, nonce: str, ts: int, now: float) -> tuple[str | None, str | None]:
        keys = [f"{PREFIX}n:{device}:{nonce}", _REVOKED, _EPOCH, f"{PREFIX}ota:{device}"]
        args = [device, int(2 * self.window_s * 1000)]
        verdict, epoch, offer = await self.call(self._admit, keys, args)
        if verdict == b"new":  # an empty Redis: seed the revoked set and offers, stamp the epoch
            await self._new_epoch(now)
            verdict, epoch, offer = await self.call(self._admit, keys, args)
            if verdict == b"new":
                raise StoreDown(1)
        if verdict == b"revoked":
            return "revoked-device", None
        if verdict == b"replay":
            return "replayed-nonce", None
        if ts < int(epoch):
            # signed before this Redis existed: its nonce may have been used in the one before
            return "signed-before-store-epoch", None
        return None, offer.decode() if offer else None

    async def _new_epoch(self, now: float, at_start: bool = False) -> None:
        devs = sorted(self.revoked.refresh(force=True))
        pipe = self.r.pipeline(transaction=True)
        if devs:
            pipe.sadd(_REVOKED, *devs)
        for device, offer in self._offers_on_disk():
            pipe.set(f"{PREFIX}ota:{device}", offer, nx=True)
        # found empty while serving: the old Redis may have taken a nonce in this very second,
        # so the epoch is the next one. At a replica's start (a Redis set up with it, or a
        # host rebooted) nothing was served in this second by this replica.
        epoch = int(now) + (0 if at_start else 1)
        pipe.set(_EPOCH, str(epoch), nx=True)
        res = await self.call(pipe.execute)
        if res[-1]:
            log.warning("relay: Redis at %s held no relay state (new, or restarted empty): requests "
                        "signed before %d are refused (their nonces are gone); %d revoked device(s) "
                        "seeded", self.url_for_log, epoch, len(devs))

    def _offers_on_disk(self):
        """The OTA offers `uplink ota` left in the state directory (re-seeded into a new Redis)."""
        if self.ota_dir is None:
            return
        for p in sorted(Path(self.ota_dir).glob("*.offer")):
            try:
                yield p.name[: -len(".offer")], p.read_text()
            except OSError:
                continue

    async def publish_offer(self, device: str, offer: str) -> None:
        await self.call(self.r.set, f"{PREFIX}ota:{device}", offer)

    async def start(self) -> None:
        """Stamp the epoch of a Redis that has none yet (if it answers now)."""
        try:
            if not await self.call(self.r.exists, _EPOCH):
                await self._new_epoch(self.clock(), at_start=True)
        except StoreDown:
            pass  # the first request will find out

    async def fresh_allowed(self, cid: str, floor_s: float, now: float) -> bool:
        if floor_s <= 0:
            return True
        try:
            return bool(await self.call(self.r.set, f"{PREFIX}fresh:{cid}", "1", nx=True,
                                        px=max(1, int(floor_s * 1000))))
        except StoreDown:
            return await self.local.fresh_allowed(cid, floor_s, now)

    async def pace(self) -> float:
        try:
            ms = int(await self.call(self._pace, [_PACE], list(self.pace_args)))
        except StoreDown:
            return self.local.bucket.reserve()  # down: this replica's own budget
        if ms < 0:
            raise Paced(-ms / 1000)
        return ms / 1000

    def tokens(self) -> "RedisTokens":
        return RedisTokens(self)

    async def ready(self) -> bool:
        try:
            await self.call(self.r.ping)
            return True
        except StoreDown:
            return False

    async def revoke(self, device: str, revoked: bool = True) -> None:
        """The file first (it survives Redis), then the live set every replica checks."""
        await self.local.revoke(device, revoked)
        await self.call(self.r.sadd if revoked else self.r.srem, _REVOKED, device)

    async def put_keys(self, device: str, keys: list) -> None:
        """A device's keys after `uplink relay rotate` (encrypted like the tokens)."""
        body = json.dumps([k.encode() for k in keys]).encode()
        name = f"{PREFIX}keys:{device}"
        await self.call(self.r.set, name, self.codec.seal_bytes(name, body))

    async def get_keys(self, device: str) -> list:
        from host_tools.relay_keys import DeviceKey

        name = f"{PREFIX}keys:{device}"
        blob = await self.call(self.r.get, name)
        body = self.codec.open_bytes(name, blob) if blob else None
        return [DeviceKey.decode(x) for x in json.loads(body)] if body else []

    async def close(self) -> None:
        await self.r.aclose()


class RedisTokens:
    """A TokenSource's shared half: the encrypted cache and the provider lock."""

    def __init__(self, st: RedisState):
        self.st = st

    def up(self) -> bool:
        return self.st.up()

    async def get(self, cid: str) -> Token | None:
        blob = await self.st.call(self.st.r.get, f"{PREFIX}tok:{cid}")
        return self.st.codec.open(cid, blob) if blob else None

    async def put(self, cid: str, tok: Token, ttl_s: float) -> None:
        await self.st.call(self.st.r.set, f"{PREFIX}tok:{cid}", self.st.codec.seal(cid, tok),
                           px=max(1000, int(ttl_s * 1000)))

    async def lock(self, cid: str, ttl_s: float) -> str | None:
        owner = secrets.token_hex(12)
        got = await self.st.call(self.st.r.set, f"{PREFIX}lock:{cid}", owner, nx=True,
                                 px=int(ttl_s * 1000))
        return owner if got else None

    async def unlock(self, cid: str, owner: str) -> None:
        # compare-and-delete: a lock that expired and was taken by another replica stays its
        await self.st.call(self.st._unlock, [f"{PREFIX}lock:{cid}"], [owner])

    async def locked(self, cid: str) -> bool:
        return bool(await self.st.call(self.st.r.exists, f"{PREFIX}lock:{cid}"))

    async def pace(self) -> float:
        return await self.st.pace()

    async def mark_failed(self, cid: str, ttl_s: float) -> None:
        """The provider call for `cid` failed: replicas waiting on it answer 503 for `ttl_s`
        instead of each asking again (a provider outage is not multiplied by the replicas)."""
        await self.st.call(self.st.r.set, f"{PREFIX}fail:{cid}", "1", px=max(100, int(ttl_s * 1000)))

    async def failed_recently(self, cid: str) -> bool:
        return bool(await self.st.call(self.st.r.exists, f"{PREFIX}fail:{cid}"))


def _redacted(url: str) -> str:
    """redis://user:password@host -> redis://user:***@host (logs never carry a password)."""
    head, sep, tail = url.rpartition("@")
    if not sep:
        return url
    scheme, _, cred = head.partition("://")
    user = cred.split(":", 1)[0]
    return f"{scheme}://{user}:***@{tail}"
