"""The token relay's connection gate: caps, timeouts and counters for its TCP/TLS connections.

aiohttp's TCPSite hands TLS to asyncio, which starts a handshake for every accepted socket with
a 60 s timeout and no limit on how many are open. A client that connects and sends nothing,
or sends its request headers a byte at a time, then holds a file descriptor and ~290 KB
(asyncio's 256 KiB TLS read buffer, OpenSSL's state) for a minute, or an hour (aiohttp's
keep-alive timeout), so about a thousand of them starve every device. Here the relay listens
on a plain TCP server whose protocol is `TLSConn`, an `asyncio.sslproto.SSLProtocol` that
first checks the gate:

- **caps**: `max_per_address` open connections per client address, `max_connections` in
  all (lowered to fit the open-file limit, which `raise_nofile_limit` lifts to the hard limit
  first). Over the per-address cap a new connection is closed at once. At the total cap the
  oldest connection that is not in the middle of a request (still in its handshake, still
  sending headers, or idle between keep-alive requests) is closed to make room: slow clients
  are always the oldest, so a device that connects and asks promptly gets in.
- **timeouts**: the TLS handshake must finish within `handshake_timeout_s`, and the request
  headers must be in within `header_timeout_s` of the accept or of the previous answer
  (which is also the keep-alive idle timeout). One sweeper task enforces the latter.
- **memory**: each connection's TLS read buffer is 16 KiB, not 256 KiB; after a flood the
  freed heap is handed back to the OS (glibc `malloc_trim`).
- **log**: refusals, timeouts, accept errors (EMFILE) and malformed requests (answered 400 by
  aiohttp, which would log a traceback quoting the request's bytes each time: `HttpLog`) are
  counted and logged as one summary line per `stats_log_interval_s`, never a line or a
  traceback per event.

`asyncio.sslproto` is the standard library's own TLS protocol (the one `loop.create_server(
ssl=...)` uses); subclassing it keeps TLS exactly as before.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import resource
import ssl
from asyncio import sslproto
from collections import Counter, OrderedDict
from typing import Any, Callable

from aiohttp.http_exceptions import HttpProcessingError

from host_tools import relay_proxy

log = logging.getLogger("uplink.relay")

# room kept below the open-file limit for everything that is not a client connection: the
# listening sockets, the event loop, the token sources' HTTPS pools, log files, and the burst
# asyncio accepts in one go (up to BACKLOG sockets) before the gate sees any of them
BACKLOG = 128
FD_RESERVE = BACKLOG + 96
CONN_KEY = "uplink_conn"  # get_extra_info() key under which a transport finds its TLSConn
_ACCEPT_ERROR = "socket.accept() out of system resource"


def raise_nofile_limit() -> int:
    """Raise the soft open-file limit to the hard limit where allowed; returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as e:
            log.warning("relay: could not raise the open-file limit from %d to %d: %s",
                        soft, want, e)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def freeze_heap() -> None:
    """Move everything alive now (modules, settings, the app) out of the cyclic GC's way.

    A full collection walks every tracked object: ~70,000 after the relay's imports, 10-30 ms
    during which no request is answered, every time enough request objects have survived
    (the nonce store keeps one per request for a minute). Frozen objects are never scanned;
    what requests create afterwards is collected as before."""
    gc.collect()
    gc.freeze()


def _malloc_trim() -> Callable[[], object] | None:
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None  # not glibc: nothing to call
    fn.argtypes = [ctypes.c_size_t]
    return lambda: fn(0)


def _addr_key(peer) -> str:
    host = peer[0] if isinstance(peer, tuple) and peer else str(peer)
    if isinstance(host, str) and host.startswith("::ffff:") and "." in host:
        host = host[7:]  # an IPv4 client on a dual-stack socket: the same address
    return host


class Gate:
    """Counts, caps and times out the relay's connections; one per listening relay."""

    def __init__(self, *, max_connections: int, max_per_address: int,
                 handshake_timeout_s: float, header_timeout_s: float,
                 stats_log_interval_s: float = 60.0, trusted_proxies: tuple[str, ...] = ()):
        self.max_per_address = max_per_address
        # balancers whose PROXY v2 header names the client (host_tools/relay_proxy.py)
        self.trusted = relay_proxy.Trusted(trusted_proxies)
        self.handshake_timeout_s = handshake_timeout_s
        self.header_timeout_s = header_timeout_s
        self.stats_log_interval_s = stats_log_interval_s
        self.file_limit = raise_nofile_limit()
        self.max_connections = max(16, min(max_connections, self.file_limit - FD_RESERVE))
        self.open = 0
        self.peak = 0
        self.per_address: dict[str, int] = {}
        # connections not inside a request, oldest first, with the time they must have sent
        # their headers by: the sweeper closes the expired ones, the total cap evicts the first
        self.idle: OrderedDict[TLSConn, float] = OrderedDict()
        self.conns: set[TLSConn] = set()
        # what happened since the last summary line
        self.counts = dict.fromkeys(
            ("refused_per_address", "evicted", "header_timeouts", "accept_errors", "malformed",
             "bad_proxy"), 0)
        self.refused_addresses: set[str] = set()
        self.malformed_kinds: Counter[str] = Counter()
        self.totals = dict(self.counts)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task | None = None
        self._prev_handler = None
        self._window_start = 0.0  # start of what the next summary line counts
        self._last_line = float("-inf")  # the first event is reported at once, then 1/interval
        self._trim = _malloc_trim()
        self._trim_at = 0  # peak size after which the next drain trims the heap

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._window_start = loop.time()
        self._prev_handler = loop.get_exception_handler()
        loop.set_exception_handler(self._exception_handler)
        self._sweeper = loop.create_task(self._sweep())

    async def stop(self) -> None:
        for c in list(self.conns):
            c.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except asyncio.CancelledError:
                pass
            self._sweeper = None
        if self._loop is not None:
            self._summary(self._loop.time(), force=True)
            if self._loop.get_exception_handler() == self._exception_handler:
                self._loop.set_exception_handler(self._prev_handler)
            self._loop = None

    # -- connection accounting --------------------------------------------------------------
    def admit(self, conn: TLSConn, addr: str, now: float) -> bool:
        """A new TCP connection from `addr`: True to serve it, False to close it."""
        n = self.per_address.get(addr, 0)
        if n >= self.max_per_address:
            self.counts["refused_per_address"] += 1
            self.refused_addresses.add(addr)
            return False
        if self.open >= self.max_connections:
            if not self.idle:  # every slot is inside a request: those finish soon
                self.counts["evicted"] += 1  # counted as a refusal of the newcomer
                return False
            oldest = next(iter(self.idle))
            self.counts["evicted"] += 1
            oldest.abort()  # releases its slot now (below), its socket a moment later
        self.open += 1
        self.peak = max(self.peak, self.open)
        self.per_address[addr] = n + 1
        self.conns.add(conn)
        self.idle[conn] = now + self.header_timeout_s
        return True

    def release(self, conn: TLSConn) -> None:
        if conn not in self.conns:
            return
        self.conns.discard(conn)
        self.idle.pop(conn, None)
        self.open -= 1
        n = self.per_address.get(conn.addr, 1) - 1
        if n > 0:
            self.per_address[conn.addr] = n
        else:
            self.per_address.pop(conn.addr, None)

    def malformed(self, kind: str) -> None:
        """aiohttp answered a request it could not parse with 400 (`kind`: the exception's class)."""
        self.counts["malformed"] += 1
        self.malformed_kinds[kind] += 1

    def busy(self, conn: TLSConn) -> None:
        """The connection's request headers are in: no deadline while it is being answered."""
        self.idle.pop(conn, None)

    def done(self, conn: TLSConn, now: float) -> None:
        """Answered: the next request's headers (keep-alive) are due within the timeout."""
        if conn in self.conns:
            self.idle[conn] = now + self.header_timeout_s
            self.idle.move_to_end(conn)

    # -- the sweeper: deadlines, summary line, heap trim -------------------------------------
    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        step = min(1.0, self.header_timeout_s / 4)
        while True:
            await asyncio.sleep(step)
            now = loop.time()
            while self.idle:
                conn, deadline = next(iter(self.idle.items()))
                if deadline > now:
                    break
                self.counts["header_timeouts"] += 1
                conn.abort()
            self._summary(now)
            # a flood has passed: hand the heap it grew back to the OS, once per flood
            if self.peak >= 32 and self.peak >= self._trim_at and self.open <= self.peak // 8:
                gc.collect()  # connections are reference cycles (TLS protocol <-> transports)
                if self._trim is not None:
                    self._trim()
                self._trim_at = self.peak * 2
                self.peak = self.open

    def _summary(self, now: float, force: bool = False) -> None:
        if not any(self.counts.values()):
            return
        if not force and now - self._last_line < self.stats_log_interval_s:
            return
        c = self.counts
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.malformed_kinds.items()))
        log.warning(
            "relay: in the last %.0f s: %d connection(s) refused at the per-address cap %d "
            "(from %d address(es)), %d closed at the total cap %d, %d closed for not sending "
            "request headers within %.0f s, %d accept error(s) (out of file descriptors?), "
            "%d malformed request(s) answered 400%s, %d bad PROXY header(s) from a trusted "
            "balancer; %d open now",
            now - self._window_start, c["refused_per_address"], self.max_per_address,
            len(self.refused_addresses), c["evicted"], self.max_connections,
            c["header_timeouts"], self.header_timeout_s, c["accept_errors"],
            c["malformed"], f" ({kinds})" if kinds else "", c["bad_proxy"], self.open,
        )
        for k, v in c.items():
            self.totals[k] += v
        self.counts = dict.fromkeys(c, 0)
        self.refused_addresses.clear()
        self.malformed_kinds.clear()
        self._window_start = self._last_line = now

    def _exception_handler(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        # asyncio reports each failed accept() (EMFILE and friends) with a traceback and
        # retries a second later; count them into the summary line instead
        if context.get("message") == _ACCEPT_ERROR:
            self.counts["accept_errors"] += 1
            return
        if self._prev_handler is not None:
            self._prev_handler(loop, context)
        else:
            loop.default_exception_handler(context)


class HttpLog(logging.LoggerAdapter):
    """aiohttp's server logger for one relay (`AppRunner(logger=...)`). A request aiohttp cannot
    parse (bad header byte, over-long line, too many headers, bad chunk) becomes a count in the
    gate's summary line: aiohttp would log a traceback each time, whose message quotes the
    request's bytes (an Authorization header among them). Anything else logs as before."""

    def __init__(self, gate: Gate):
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self.gate = gate

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, tuple):
            exc = exc[1]
        if isinstance(exc, HttpProcessingError):
            self.gate.malformed(type(exc).__name__)  # the class only: never the message
            return
        super().log(level, msg, *args, **kwargs)


class TLSConn(sslproto.SSLProtocol):
    """One client connection: admitted by the gate, then TLS exactly as asyncio does it."""

    max_size = 16 * 1024  # asyncio's TLS read buffer: 256 KiB per connection by default

    def __init__(self, gate: Gate, app_protocol: asyncio.BaseProtocol, ctx: ssl.SSLContext,
                 loop: asyncio.AbstractEventLoop):
        super().__init__(loop, app_protocol, ctx, None, server_side=True,
                         ssl_handshake_timeout=gate.handshake_timeout_s,
                         ssl_shutdown_timeout=gate.handshake_timeout_s)
        self._extra[CONN_KEY] = self
        self.gate = gate
        self.addr = "?"
        self.raw: asyncio.BaseTransport | None = None
        self._proxy: bytearray | None = None  # a trusted balancer's PROXY header, coming in
        self._proxy_timer: asyncio.TimerHandle | None = None
        self._scratch = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        self.raw = transport
        self.addr = _addr_key(transport.get_extra_info("peername"))
        if self.addr in self.gate.trusted:
            # the balancer's header comes first; the caps count the client it names
            self._proxy = bytearray()
            self._proxy_timer = self._loop.call_later(self.gate.handshake_timeout_s, self._bad_proxy)
            return
        self._admit(transport)

    def _admit(self, transport: asyncio.BaseTransport) -> bool:
        if not self.gate.admit(self, self.addr, self._loop.time()):
            transport.abort()  # type: ignore[attr-defined]
            return False
        super().connection_made(transport)
        return True

    def get_buffer(self, n: int):
        if self._proxy is not None:  # a small scratch buffer: the header is short
            self._scratch = bytearray(relay_proxy.MAX_LEN)
            return memoryview(self._scratch)
        return super().get_buffer(n)

    def buffer_updated(self, nbytes: int) -> None:
        if self._proxy is None:
            return super().buffer_updated(nbytes)
        data, self._scratch = bytes(self._scratch[:nbytes]), bytearray()
        self._proxy_data(data)

    def _proxy_data(self, data: bytes) -> None:
        buf = self._proxy
        assert buf is not None
        buf += data
        try:
            total = relay_proxy.needed(buf)
            if not total or len(buf) < total:
                return
            src = relay_proxy.parse(bytes(buf[:total]))
        except relay_proxy.ProxyHeaderError:
            return self._bad_proxy()
        rest = bytes(buf[total:])
        self._proxy = None
        if self._proxy_timer is not None:
            self._proxy_timer.cancel()
            self._proxy_timer = None
        if src is not None:  # (LOCAL: the balancer's own check, its address stands)
            self.addr = _addr_key(src)
            self._extra["peername"] = src  # what aiohttp's request.remote and the audit see
        raw = self.raw
        if raw is None or not self._admit(raw):
            return
        if rest:  # the start of the TLS handshake came in the same read
            view = super().get_buffer(len(rest))
            view[:len(rest)] = rest
            super().buffer_updated(len(rest))

    def _bad_proxy(self) -> None:
        self._proxy_timer = None
        if self._proxy is not None:
            self.gate.counts["bad_proxy"] += 1
            self._proxy = None
            if self.raw is not None:
                self.raw.abort()  # type: ignore[attr-defined]

    def eof_received(self):
        if self._proxy is not None:
            self._bad_proxy()
            return False
        return super().eof_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._proxy_timer is not None:
            self._proxy_timer.cancel()
            self._proxy_timer = None
        self.gate.release(self)
        self._extra.pop(CONN_KEY, None)  # no reference cycle: freed at once, not by the gc
        self.raw = None
        super().connection_lost(exc)

    def abort(self) -> None:
        self.gate.release(self)
        if self.raw is not None:
            self.raw.abort()  # type: ignore[attr-defined]
