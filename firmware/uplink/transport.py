# Byte streams to a broker: mqtt:// (TCP), mqtts:// (TLS), ws:// and wss:// (WebSocket).
#
# Everything above this module sees one shape: await readexactly(n), write(buf), await drain(),
# close(). Reads are served from one small reused buffer and writes are gathered into another,
# so a burst of small MQTT packets costs one socket call (and one TLS record) instead of one
# each, and a PUBACK costs no allocation beyond the bytes returned.
import asyncio
import select
import socket
import ssl

PORTS = {"mqtt": 1883, "mqtts": 8883, "ws": 80, "wss": 443}
RBUF = 512  # read buffer: a burst of 128 PUBACKs in one recv
WBUF = 1024  # write buffer: packets gathered between drains


class TLSError(OSError):
    # mbedTLS reports a refused certificate as ValueError; callers retrying a connection
    # catch OSError, and the text (wrong CA, CN mismatch) is what a person needs to see.
    pass


def parse_url(url):
    """'mqtts://host:8883' -> ('mqtts', 'host', 8883, ''); ws(s) paths default to '/'."""
    i = url.find("://")
    scheme = url[:i] if i > 0 else ""
    if scheme not in PORTS:
        raise ValueError("URL must start with mqtt://, mqtts://, ws:// or wss://: " + url)
    rest = url[i + 3 :]
    j = rest.find("/")
    if j < 0:
        hostport, path = rest, ""
    else:
        hostport, path = rest[:j], rest[j:]
    if scheme in ("ws", "wss") and not path:
        path = "/"
    port = PORTS[scheme]
    if hostport.startswith("["):  # [IPv6]:port
        k = hostport.find("]")
        host, tail = hostport[1:k], hostport[k + 1 :]
    else:
        k = hostport.rfind(":")
        host, tail = (hostport, "") if k < 0 else (hostport[:k], hostport[k:])
    if tail:
        if not tail.startswith(":") or not tail[1:].isdigit():
            raise ValueError("bad port in URL: " + url)
        port = int(tail[1:])
    if not host or "@" in host or not 0 < port < 65536:
        raise ValueError("bad host or port in URL: " + url)
    return scheme, host, port, path


_ctx = {}  # (ca, insecure) -> SSLContext: at most two (the broker's and the token relay's)


def tls_context(ca=None, insecure=False, cert=None):
    """A client context that checks the server against `ca` (DER bytes or a DER file path),
    and shows the server the client certificate and private key `cert` = (cert, key), DER
    files (ThingsBoard's X.509 device authentication), when given.
    Made once per CA and reused by every connect: an SSLContext holds its own entropy and
    DRBG state and the parsed CA chain (extmod/modtls_mbedtls.c, ssl_context_make_new and
    ssl_context_load_cadata: mbedtls_ssl_conf_ca_chain keeps pointing at the context's
    cacert, so the CA stays loaded for later wrap_socket calls). A new one per reconnect
    was a DER file read, a certificate parse and a few KB of garbage each time, on the
    ESP32 partly in the IDF heap that mbedTLS and Wi-Fi share."""
    # the kind first: a dict lookup compares the keys it probes, and a path (str) compared with
    # DER (bytes) prints "Warning: Comparison between bytes and str" on the console (a relay
    # device has both: the relay's CA as a path, the broker's as DER); a tuple compare stops
    # at its first unequal element
    k = (isinstance(ca, str), ca, bool(insecure), cert)
    ctx = _ctx.get(k)
    if ctx is not None:
        return ctx
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if insecure:
        ctx.verify_mode = ssl.CERT_NONE
    else:
        if ca is None:
            raise ValueError("TLS needs a CA certificate (DER) unless insecure is set")
        der = ca
        if isinstance(ca, str):
            with open(ca, "rb") as f:
                der = f.read()
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=der)
    if cert:
        try:
            ctx.load_cert_chain(cert[0], cert[1])
        except (OSError, ValueError) as e:
            raise TLSError("TLS: client certificate %s, key %s: %s" % (cert[0], cert[1], e))
    if len(_ctx) >= 2:
        _ctx.clear()  # a third CA: only happens when a config changes, so start over
    _ctx[k] = ctx
    return ctx


def forget_contexts():
    """Drop the cached TLS contexts (a one-off download's): the next session makes its own."""
    _ctx.clear()


def _tls_error(e):
    return TLSError("TLS: " + " ".join(str(e).split()))


class Stream:
    """A connected (maybe TLS-wrapped) non-blocking socket as a buffered byte stream."""

    def __init__(self, sock, tls=False, wbuf=WBUF, raw=None):
        self._s = sock
        self._tls = tls
        self._raw = raw  # the TCP socket under a TLS one (see close)
        # asyncio's stream over the same socket: used only to wait for readiness and to
        # hold bytes the socket would not take yet (bounded: the caller drains each batch)
        self._a = asyncio.StreamReader(sock)
        self._aw = asyncio.StreamWriter(sock)  # (the same class in MicroPython)
        self._lock = asyncio.Lock()  # one task at a time may wait in drain()
        self._ib = bytearray(RBUF)
        self._im = memoryview(self._ib)
        self._r0 = 0  # unread bytes are _ib[_r0:_r1]
        self._r1 = 0
        self._ob = bytearray(wbuf)
        self._wcap = wbuf
        self._om = memoryview(self._ob)
        self._w = 0  # gathered bytes are _ob[:_w]
        self._stuck = False  # asyncio holds bytes the socket would not take yet
        # Bytes written while a drain waits go here, not to asyncio: its drain() ends by
        # emptying its buffer, which would drop anything appended meanwhile.
        self._draining = False
        self._more = []

    # -- reading -----------------------------------------------------------------------
    def take(self, n):
        """n bytes if already buffered, else None: the reader's fast path (no syscall, no yield)."""
        r0 = self._r0
        if self._r1 - r0 < n:
            return None
        self._r0 = r0 + n
        return bytes(self._im[r0 : r0 + n])

    def unread(self, n):
        """Give back the last n bytes take() returned."""
        self._r0 -= n

    async def readexactly(self, n):
        b = self.take(n)
        if b is not None:
            return b
        if n > RBUF:
            return await self._read_big(n)
        while self._r1 - self._r0 < n:
            await self.fill()
        return self.take(n)

    async def fill(self):
        """Wait until at least one more byte is buffered."""
        # move what is left to the front, then read as much as the socket has: over TLS each
        # read returns one record (often one 4-byte PUBACK), so there keep reading while it gives
        r0, r1 = self._r0, self._r1
        if r0:
            if r1 > r0:
                self._ib[: r1 - r0] = bytes(self._im[r0:r1])
            self._r0, r1 = 0, r1 - r0
            self._r1 = r1
        im, s = self._im, self._s
        try:
            n = s.readinto(im[r1:])
            while n is None:  # nothing yet (or half a TLS record): wait until readable
                n = await self._a.readinto(im[r1:])
            if not n:
                raise EOFError("connection closed by peer")
            r1 += n
            while self._tls and r1 < RBUF:  # (a TCP read already took all there was)
                n = s.readinto(im[r1:])
                if not n:  # None: drained for now; 0: EOF, seen by the next fill
                    break
                r1 += n
        except ValueError as e:
            raise _tls_error(e)
        self._r1 = r1

    async def _read_big(self, n):
        out = bytearray(n)
        om = memoryview(out)
        k = self._r1 - self._r0
        om[:k] = self._im[self._r0 : self._r1]
        self._r0 = self._r1 = 0
        try:
            while k < n:
                r = self._s.readinto(om[k:])
                if r is None:
                    r = await self._a.readinto(om[k:])
                if r is None:
                    continue
                if not r:
                    raise EOFError("connection closed by peer")
                k += r
        except ValueError as e:
            raise _tls_error(e)
        return bytes(out)

    # -- writing -----------------------------------------------------------------------
    def write(self, buf):
        """Queue buf whole; it reaches the socket at the next drain() (or when the buffer fills).
        Returns True when the socket is refusing bytes: the caller should drain() now."""
        n = len(buf)
        w = self._w
        cap = self._wcap
        if w + n > cap:
            self.push()
            w = 0
            if n > cap:  # too big to gather: hand it over in one piece
                return self._write(buf)
        self._om[w : w + n] = buf
        self._w = w + n
        return self._stuck

    def _write(self, buf):
        if self._draining:
            self._more.append(bytes(buf))  # (bounded: each writer then waits in drain)
            self._stuck = True
            return True
        try:
            self._aw.write(buf)  # tries the socket now, keeps (copies) what it would not take
        except ValueError as e:
            raise _tls_error(e)
        self._stuck = s = bool(getattr(self._aw, "out_buf"))
        return s

    def push(self):
        """Give the gathered bytes to the socket without waiting; True if it refused some."""
        if self._w:
            self._write(self._om[: self._w])
            self._w = 0
        return self._stuck

    async def drain(self):
        self.push()
        if not self._stuck:
            return
        async with self._lock:  # the socket is full: wait until it takes the rest
            self._draining = True
            try:
                while True:
                    await self._aw.drain()
                    more = self._more
                    if not more:
                        break
                    self._more = []
                    for b in more:
                        self._aw.write(b)
            except ValueError as e:
                raise _tls_error(e)
            finally:
                self._draining = False
            self._stuck = False

    def close(self):
        # Both: a TLS socket whose handshake failed has let go of its TCP socket already
        # (extmod/modtls_mbedtls.c), which would stay open until a GC pass found it.
        for s in (self._s, self._raw):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass


async def open_tcp(host, port, *, ssl_ctx=None, server_hostname=None, timeout_ms=10000, wbuf=WBUF):
    """Connect to host:port, TLS-wrapped when ssl_ctx is given (SNI and name check = host).
    wbuf: bytes gathered between drains; 0 passes writes straight through (WebSocket gathers
    its frames itself, so a second gather layer under it would only copy)."""
    ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
    s = socket.socket(ai[0], ai[1], ai[2])
    try:
        # we gather whole packets and send each batch at once, so Nagle's wait for an ACK
        # (which the peer delays up to 40 ms) only ever adds latency
        s.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY (same numbers in lwIP and Linux)
    except OSError:
        pass
    s.setblocking(False)
    try:
        s.connect(ai[-1])
    except OSError as e:
        if e.args[0] not in (115, 119):  # EINPROGRESS (Linux 115, lwIP 119)
            s.close()
            raise
    try:
        await asyncio.wait_for_ms(_connected(s, host, port), timeout_ms)
    except BaseException:
        s.close()
        raise
    if ssl_ctx is None:
        return Stream(s, False, wbuf)
    try:
        # the handshake runs inside the first reads and writes, so it never blocks the loop
        t = ssl_ctx.wrap_socket(
            s, server_hostname=server_hostname or host, do_handshake_on_connect=False
        )
        t.setblocking(False)
    except ValueError as e:
        s.close()
        raise _tls_error(e)
    except BaseException:
        s.close()
        raise
    return Stream(t, True, wbuf, s)


async def _connected(s, host, port):
    # asyncio has no public "wait until writable", so poll: loopback and LAN connects finish
    # at the first look, a remote broker within a few 10 ms steps. HUP asked for: the ESP32
    # reports a failed connect only then (ports/esp32/modsocket.c: lwIP's exception set); a
    # refused connect is writable too, so it looked connected until the first read.
    p = select.poll()
    p.register(s, select.POLLOUT | select.POLLERR | select.POLLHUP)
    while True:
        for _, ev in p.poll(0):
            if ev & (select.POLLERR | select.POLLHUP):
                try:
                    s.recv(1)  # the connect's error (MicroPython has no getsockopt(SO_ERROR))
                    e = 0
                except OSError as x:
                    e = x.args[0]
                if e in (111, 104):  # ECONNREFUSED; lwIP: ECONNRESET, the RST that answered the SYN
                    raise OSError(111, "connection refused by %s:%d" % (host, port))
                raise OSError(e or 5, "cannot connect to %s:%d (errno %d)" % (host, port, e))
            return
        await asyncio.sleep_ms(10)


async def open_stream(url, *, ca=None, insecure=False, timeout_ms=10000, cert=None):
    """A connected Stream for mqtt://, mqtts://, ws://, wss:// URLs; cert: (client
    certificate, its key), DER files, for TLS."""
    scheme, host, port, path = parse_url(url)
    ctx = None
    if scheme in ("mqtts", "wss"):
        if insecure:
            print("WARNING: TLS certificate check is OFF for %s (insecure)" % host)
        ctx = tls_context(ca, insecure, cert)
    plain = scheme in ("mqtt", "mqtts")
    s = await open_tcp(
        host, port, ssl_ctx=ctx, server_hostname=host, timeout_ms=timeout_ms, wbuf=WBUF if plain else 0
    )
    if plain:
        return s
    from uplink import ws

    try:
        return await asyncio.wait_for_ms(ws.handshake(s, host, port, path), timeout_ms)
    except BaseException:
        s.close()
        raise
