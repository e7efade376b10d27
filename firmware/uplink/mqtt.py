# asyncio MQTT 3.1.1 client: QoS 0 and 1, pipelined publishes within a window, keepalive with
# dead-broker detection, and reconnection in the background (backoff with jitter, fresh
# credentials before every attempt, subscriptions restored, unacknowledged QoS 1 resent).
#
# Speed comes from three habits: every packet is built in one buffer and written whole (no
# Nagle stalls); the reader task handles every PUBACK already received before it yields, so
# a waiting publisher wakes once per burst, not once per ack; and wait=False publishes are
# gathered and sent with one drain per batch (one syscall, few TLS records). Each task switch
# matters: on the unix port a poll with a TLS socket registered costs about a millisecond.
import asyncio
import random
from time import ticks_diff, ticks_ms

from uplink import transport

TYPE_CHECKING = False
if TYPE_CHECKING:  # names for the type checker only; MicroPython ignores annotations
    from typing import Any

CONNACK = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}
PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"
YIELD_EVERY = 64  # packets the reader handles before letting other tasks run
FLUSH_MS = 20  # longest a wait=False publish waits in the gather buffer


class MQTTError(Exception):
    def __init__(self, msg, code=None):
        super().__init__(msg)
        self.code = code


class Oversize(MQTTError):
    """A PUBLISH over max_packet, read past and dropped: the connection stays up. `ack` is
    its PUBACK body (the packet id) for QoS 1, else None."""

    def __init__(self, msg, ack):
        super().__init__(msg)
        self.ack = ack


async def _skip_publish(s, first, n, max_packet):
    # Read the topic and packet id, then the payload in small pieces without keeping it: the
    # broker would send the same message again on the next session if we disconnected, and a
    # reconnect loop over one big downlink is worse than losing that downlink.
    tl = int.from_bytes(await s.readexactly(2), "big")
    if 2 + tl > n or tl > 256:
        raise MQTTError("packet of %d bytes from broker is over max_packet %d" % (n, max_packet))
    topic = await s.readexactly(tl)
    qos = (first >> 1) & 3
    ack = await s.readexactly(2) if qos == 1 else None
    left = n - 2 - tl - (2 if ack else 0)
    while left > 0:
        k = left if left < 256 else 256
        await s.readexactly(k)
        left -= k
    raise Oversize("message of %d bytes on %s dropped: over max_packet %d (raise the platform's "
                   "downlink size, or send less)" % (n, bytes(topic).decode("utf-8", "replace")[:64], max_packet), ack)


class MQTTAuthError(MQTTError):
    pass


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if not n:
            out.append(b)
            return out
        out.append(b | 0x80)


def _field(b):
    if isinstance(b, str):
        b = b.encode()
    return bytes((len(b) >> 8, len(b) & 255)) + b


def _jitter(ms):
    # half to all of ms: a fleet dropped at once does not come back at once
    return ms // 2 + random.getrandbits(16) * (ms // 2) // 65536


def _span(ms):
    return "%d s" % (ms // 1000) if ms % 1000 == 0 else "%d ms" % ms


def _packet(first, body):
    return bytes((first,)) + _varint(len(body)) + body


def _sub_packet(pid, topic, qos):
    return _packet(0x82, bytes((pid >> 8, pid & 255)) + _field(topic) + bytes((qos,)))


def publish_packet(topic, payload, qos, retain, pid):
    """A whole PUBLISH in one bytearray (the DUP bit is set in place on resend)."""
    t = topic.encode() if isinstance(topic, str) else topic
    tl = len(t)
    rl = 2 + tl + len(payload) + (2 if qos else 0)
    if rl < 128:
        n = 2
    elif rl < 16384:
        n = 3
    elif rl < 2097152:
        n = 4
    else:
        n = 5
    pkt = bytearray(n + rl)
    pkt[0] = 0x30 | (qos << 1) | (1 if retain else 0)
    i, x = 1, rl
    while x > 127:
        pkt[i] = (x & 0x7F) | 0x80
        x >>= 7
        i += 1
    pkt[i] = x
    pkt[i + 1] = tl >> 8
    pkt[i + 2] = tl & 255
    i += 3
    pkt[i : i + tl] = t
    i += tl
    if qos:
        pkt[i] = pid >> 8
        pkt[i + 1] = pid & 255
        i += 2
    pkt[i:] = payload
    return pkt


async def read_packet(s, max_packet):
    """(first byte, body) of the next packet; MQTTError when malformed or over max_packet."""
    h = s.take(2) or await s.readexactly(2)
    n = h[1]
    if n & 0x80:
        n &= 0x7F
        shift = 7
        while True:
            b = (await s.readexactly(1))[0]
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 21:
                raise MQTTError("malformed remaining length from broker")
    if n > max_packet:
        if h[0] >> 4 == 3 and (h[0] >> 1) & 3 < 2:  # a PUBLISH: dropped, the link stays up
            await _skip_publish(s, h[0], n, max_packet)
        raise MQTTError("packet of %d bytes from broker is over max_packet %d" % (n, max_packet))
    if not n:
        return h[0], b""
    return h[0], s.take(n) or await s.readexactly(n)


class MQTTClient:
    # callbacks, all optional: on_message(topic, payload, retained), on_ack(pid),
    # on_down() (the connection just went: before any resend), on_up() (a CONNACK), async
    # on_connect(), on_status(event, detail)
    on_message: Any = None
    on_ack: Any = None
    on_down: Any = None
    on_up: Any = None
    on_connect: Any = None
    on_status: Any = None
    # the cloud's rate limits (uplink.platforms.tb_limits.Limits), or None: every publish waits
    # for its tokens, and a resend after a reconnect takes them
    pace: Any = None
    # Reconnect pacing (ms). A refused login waits long: hammering a broker with a bad token
    # gets a device banned, and a new token takes minutes to appear anyway. Other failures
    # (no network, broker down) wait at most 15 s (7.5-15 s with jitter): at 60 s a device
    # stayed offline up to a minute after the network came back, while an attempt costs one
    # connect (plus a TLS handshake, ~1 s of CPU on an ESP32) and the jitter spreads a
    # fleet's retries after a broker restart. kick() ends a wait at once.
    backoff_min_ms = 500
    backoff_max_ms = 15000
    auth_backoff_ms = 60000
    auth_backoff_max_ms = 900000
    connect_timeout_ms = 10000
    # A connection that ends sooner than this, with no PUBACK on it, counts as a failed connect
    # for the backoff: a broker that accepts and then drops (full, rate limit, token refused
    # after CONNACK, a NAT timeout) must not get a reconnect storm. Longer ones, and ones that
    # delivered something, reconnect at once.
    stable_ms = 10000

    def __init__(
        self,
        url,
        client_id,
        *,
        user=None,
        password=None,
        credentials=None,
        keepalive=60,
        clean=True,
        will=None,
        ca=None,
        insecure=False,
        window=48,
        max_packet=4096,
        cert=None,
        key=None,
    ):
        transport.parse_url(url)  # a bad URL fails here, not at the first connect
        self._url = url
        self._id = client_id
        self._user = user
        self._pw = password
        self._creds = credentials
        self._ka = keepalive
        self._clean = clean
        self._will = will  # (topic, message[, retain[, qos]])
        self._ca = ca
        self._insecure = insecure
        self._cert = (cert, key) if cert else None  # the client certificate and its key (DER files)
        window = max(1, window)
        self._window = window
        self._max = max_packet
        self._s = None  # the current stream, None while disconnected
        self._tasks = []  # reader, pinger, flusher of the current connection
        self._pid = 0
        # QoS 1 packets awaiting PUBACK, kept for resending: packet id pid lives in slot
        # pid % window. Two fixed lists instead of a dict: no table regrowth or tombstones
        # as ids cycle, so a long drain neither fragments the heap nor slows lookups.
        self._ipid = [0] * window  # pid in each slot, 0 = free
        self._ipkt: list = [None] * window
        self._n = 0  # packets in flight
        self._pending = {}  # pid -> None until SUBACK/UNSUBACK, then the return code
        self._subs = {}  # topic -> qos, restored after each reconnect
        self._ev = asyncio.Event()  # pulsed when acks arrive or the connection changes
        self._lost = asyncio.Event()
        self._kick = asyncio.Event()  # gathered writes wait for the flusher
        self._kicked = False
        self._keeper = None
        self._closing = False
        self._rx = self._tx = 0
        self._now = asyncio.Event()  # kick(): end the reconnect wait
        self._fails = 0  # failed connects and short connections in a row: the backoff's exponent
        self._up = None  # ticks_ms() of the last CONNACK
        self._acked = False
        self.connections = 0  # CONNACKs so far: tells a new connection from the last one

    # -- public ------------------------------------------------------------------------
    @property
    def window(self):
        return self._window

    @property
    def is_connected(self):
        return self._s is not None

    def set_url(self, url):
        transport.parse_url(url)
        self._url = url

    async def connect(self, retry=False):
        self._closing = False
        if retry:
            await self._retry()
        else:
            await self._connect_once()
        if self._keeper is None:
            self._keeper = asyncio.create_task(self._keep())

    def kick(self):
        """The network is back (e.g. Wi-Fi reconnected): a reconnect waiting out its backoff
        tries now, and the backoff starts again from backoff_min_ms. A wait after a refused
        login (auth_backoff_ms) is not shortened: a bad token must not hammer the broker."""
        self._now.set()

    async def reconnect(self):
        self._up = None  # asked for (a redirect): no flap, reconnect at once
        if self._s is not None:
            self._down(self._s, "reconnect requested")
        else:
            self._lost.set()

    async def disconnect(self):
        self._closing = True
        if self._keeper is not None:
            self._keeper.cancel()
            self._keeper = None
        s = self._s
        if s is not None:
            try:
                s.write(DISCONNECT)
                await s.drain()
            except Exception:
                pass
            self._down(s, "disconnect")

    async def publish(self, topic, payload, qos=0, retain=False, wait=True):
        if isinstance(payload, str):
            payload = payload.encode()
        if self.pace is not None:
            await self.pace.wait(topic, payload)
        if not qos:
            s = self._s
            if s is not None:  # QoS 0 is best effort: dropped while disconnected
                if self._send(s, publish_packet(topic, payload, 0, retain, 0), wait):
                    await self._drain(s)
            return 0
        if qos != 1:
            raise ValueError("QoS 2 is not supported")
        while self._n >= self._window:
            await self._room()
        w = self._window
        pid = self._pid % 65535 + 1  # the common case inline: the next id, its slot free
        if self._ipid[pid % w] or pid in self._pending:
            pid = self._new_pid(True)
        self._pid = pid
        pkt = publish_packet(topic, payload, 1, retain, pid)
        k = pid % w
        self._ipid[k] = pid
        self._ipkt[k] = pkt
        self._n += 1
        s = self._s
        if s is not None:  # else the resend after the next CONNACK sends it
            stuck = self._send(s, pkt, wait)
            pkt[0] |= 8  # from now on a resend is a duplicate
            if stuck:
                await self._drain(s)
        if wait:
            while self._ipid[k] == pid:
                await self._ev.wait()
        return pid

    async def flush(self):
        """Return when everything queued is written and every QoS 1 publish acknowledged."""
        while True:
            s = self._s
            if s is not None:
                await self._drain(s)
            if not self._n:
                return
            await self._ev.wait()

    async def subscribe(self, topic, qos=0):
        if qos not in (0, 1):
            raise ValueError("subscribe at QoS 0 or 1")
        self._subs[topic] = qos
        s = self._s
        if s is not None:
            await self._sub(s, topic, qos)

    async def unsubscribe(self, topic):
        self._subs.pop(topic, None)
        s = self._s
        if s is not None:
            pid = self._new_pid()
            self._pending[pid] = None
            if self._send(s, _packet(0xA2, bytes((pid >> 8, pid & 255)) + _field(topic)), True):
                await self._drain(s)
            await self._answer(s, pid)

    # -- connecting --------------------------------------------------------------------
    async def _connect_once(self):
        if self._s is not None:
            self._down(self._s, "connecting again")
        user, pw = self._user, self._pw
        if self._creds is not None:
            user, pw = await self._creds()  # a token may have been refreshed
        ms = self.connect_timeout_ms
        try:
            s = await transport.open_stream(self._url, ca=self._ca, insecure=self._insecure, timeout_ms=ms,
                                            cert=self._cert)
        except asyncio.TimeoutError:
            raise OSError("cannot reach %s within %s (TCP connect or WebSocket upgrade)"
                          % (transport.parse_url(self._url)[1], _span(ms)))
        sent = [False]
        try:
            # (over TLS the handshake runs inside this first drain: it is under the timeout too)
            pkt = self._connect_packet(user, pw)
            await asyncio.wait_for_ms(self._connack(s, pkt, sent), ms)
        except asyncio.TimeoutError:
            s.close()
            # a broker (or a proxy, a captive portal) that accepts TCP but never speaks MQTT
            raise MQTTError(("no CONNACK within %s" if sent[0] else
                             "no answer to the TLS handshake within %s") % _span(ms))
        except OSError as e:
            s.close()
            if self._cert is None:
                raise
            # a broker that does not take our client certificate ends the TLS session before
            # any MQTT: a refused login, waited out as one (adapter.explain says more)
            raise MQTTAuthError("TLS session ended before CONNACK (%s)" % e)
        except BaseException:
            s.close()
            raise
        # Subscriptions, then unacknowledged QoS 1 packets in the order first sent, go out before
        # anyone else writes: nothing overtakes them, and a reply to a resent packet finds its
        # subscription (the broker takes packets in order).
        subs = []
        for topic, qos in self._subs.items():
            pid = self._new_pid()
            self._pending[pid] = None
            s.write(_sub_packet(pid, topic, qos))
            subs.append((pid, topic))
        last = self._pid
        for pid in sorted([p for p in self._ipid if p], key=lambda p: (p - last - 1) % 65535):
            pkt = self._ipkt[pid % self._window]
            s.write(pkt)
            pkt[0] |= 8
            if self.pace is not None:
                self.pace.resent(pkt)
        self._s = s
        self._rx = self._tx = self._up = ticks_ms()
        self._acked = False  # a PUBACK on this connection: it got somewhere (_keep)
        self.connections += 1
        self._kick.clear()
        self._kicked = False
        # on_connect runs in a task of this connection: cancelled if it drops, so a hook
        # waiting for a slot never holds up the next reconnect
        self._tasks = [asyncio.create_task(self._reader(s)), asyncio.create_task(self._flusher(s)),
                       asyncio.create_task(self._restore(s, subs))]
        if self._ka:
            self._tasks.append(asyncio.create_task(self._pinger(s)))
        self._status("connected", None)
        if self.on_up is not None:
            self.on_up()
        self._pulse()
        await self._drain(s)

    def _connect_packet(self, user, pw):
        flags = 0x02 if self._clean else 0
        payload = _field(self._id)
        w = self._will
        if w:
            flags |= 0x04 | ((w[3] if len(w) > 3 else 0) << 3) | (0x20 if len(w) > 2 and w[2] else 0)
            payload += _field(w[0]) + _field(w[1])
        if pw is not None and user is None:
            user = ""  # 3.1.1 allows a password only after a user name
        if user is not None:
            flags |= 0x80
            payload += _field(user)
        if pw is not None:
            flags |= 0x40
            payload += _field(pw)
        head = b"\x00\x04MQTT\x04" + bytes((flags, self._ka >> 8, self._ka & 255))
        return _packet(0x10, head + payload)

    async def _connack(self, s, pkt, sent):
        s.write(pkt)
        await s.drain()
        sent[0] = True
        p = await s.readexactly(4)
        if p[0] != 0x20 or p[1] != 2:
            raise MQTTError("expected CONNACK, broker sent %r" % p)
        code = p[3]
        if code:
            why = "CONNACK %d: %s" % (code, CONNACK.get(code, "unknown reason"))
            raise (MQTTAuthError if code in (4, 5) else MQTTError)(why, code)

    async def _restore(self, s, subs):
        # the SUBACKs first, so replies to what on_connect publishes are not missed
        for pid, topic in subs:
            if await self._answer(s, pid) == 0x80:
                self._subs.pop(topic, None)
                self._status("error", MQTTError("broker refused the subscription to " + topic))
        if self.on_connect is not None and self._s is s:
            try:
                await self.on_connect()
            except Exception as e:
                self._status("error", e)

    async def _sub(self, s, topic, qos):
        pid = self._new_pid()
        self._pending[pid] = None
        if self._send(s, _sub_packet(pid, topic, qos), True):
            await self._drain(s)
        if await self._answer(s, pid) == 0x80:
            self._subs.pop(topic, None)
            raise MQTTError("broker refused the subscription to " + topic)

    async def _answer(self, s, pid):
        # a SUBACK/UNSUBACK code, or None if the connection went (the keeper restores it)
        try:
            while self._pending.get(pid) is None and self._s is s:
                await self._ev.wait()
            return self._pending.get(pid)
        finally:
            self._pending.pop(pid, None)

    async def _retry(self):
        auth = 0
        while not self._closing:
            self._now.clear()  # a kick() from now on (even during this attempt) ends the wait
            try:
                await self._connect_once()
                return
            except MQTTAuthError as e:
                self._status("auth_error", e.args[0])
                delay = min(self.auth_backoff_max_ms, self.auth_backoff_ms << min(auth, 8))
                auth += 1
                delay = _jitter(delay)
                self._status("backoff", delay / 1000)
                await asyncio.sleep_ms(delay)
                continue
            except Exception as e:  # OSError, TLS, timeout, other refusals: all worth a retry
                self._status("error", e)
            await self._backoff()

    async def _backoff(self):
        # jittered and capped; kick() ends it, and then earlier failures say nothing
        delay = _jitter(min(self.backoff_max_ms, self.backoff_min_ms << min(self._fails, 16)))
        self._fails += 1
        self._status("backoff", delay / 1000)
        try:
            await asyncio.wait_for_ms(self._now.wait(), delay)
            self._fails = 0
        except asyncio.TimeoutError:
            pass

    async def _keep(self):
        # runs for the client's life: re-establishes every lost connection. A MemoryError
        # here must not end it: a client that never reconnects is a silent board.
        while not self._closing:
            try:
                await self._lost.wait()
                self._lost.clear()
                if self._closing or self._s is not None:
                    continue
                lasted = ticks_diff(ticks_ms(), self._up) if self._up is not None else self.stable_ms
                if lasted < self.stable_ms and not self._acked:
                    self._now.clear()
                    self._status("error", MQTTError("the connection ended %d ms after CONNACK: "
                                                    "waiting as after a failed connect" % lasted))
                    await self._backoff()
                else:
                    self._fails = 0
                await self._retry()
            except Exception as e:
                self._status("error", e)
                self._lost.set()
                await asyncio.sleep_ms(self.backoff_min_ms)

    def _down(self, s, why):
        if self._s is not s:
            return  # an older connection; already handled
        self._s = None
        me = asyncio.current_task()
        for t in self._tasks:
            if t is not me:
                t.cancel()
        self._tasks = []
        # SUBACKs still awaited belong to this connection: the next one asks again
        self._pending.clear()
        s.close()
        self._status("disconnected", why)
        if self.on_down is not None:
            try:
                self.on_down()
            except Exception as e:
                self._status("error", e)
        self._pulse()
        if not self._closing:
            self._lost.set()

    # -- the connection's tasks ----------------------------------------------------------
    async def _reader(self, s):
        # PUBACKs are the bulk of the traffic: they are handled here without a call, and the
        # waiting publishers are woken once per burst (when the buffer runs dry), not per ack
        n = 0
        acked = False
        try:
            while True:
                h = s.take(4)
                if h is None:
                    if acked:  # the burst of acks is over: wake the publishers once
                        acked = False
                        self._pulse()
                    if s.take(1) is None:  # nothing buffered: wait here, so that a lone
                        await s.fill()  # PUBACK takes the fast path too
                        h = s.take(4)
                    else:  # a short packet (PINGRESP) or part of one: the slow path
                        s.unread(1)
                if h is not None and h[0] == 0x40 and h[1] == 2:
                    if self._release(h[2] << 8 | h[3]):
                        acked = True
                else:
                    if h is not None:
                        s.unread(4)
                    if acked:  # the burst of acks is over: wake the publishers once
                        acked = False
                        self._pulse()
                    try:
                        first, body = await read_packet(s, self._max)
                    except Oversize as e:
                        if e.ack is not None:  # acknowledged, or the broker sends it again
                            s.write(b"\x40\x02" + e.ack)
                            s.push()
                        self._status("error", e)
                        continue
                    self._handle(s, first, body)
                self._rx = ticks_ms()
                n += 1
                if n >= YIELD_EVERY:  # a flood must not starve the app
                    n = 0
                    if acked:
                        acked = False
                        self._pulse()
                    await asyncio.sleep_ms(0)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._down(s, e)

    def _handle(self, s, first, body):
        if first == 0x40:  # PUBACK
            if len(body) != 2:
                raise MQTTError("malformed PUBACK")
            if self._release(body[0] << 8 | body[1]):
                self._pulse()
        elif first >> 4 == 3:
            self._incoming(s, first, body)
        elif first == 0x90 or first == 0xB0:  # SUBACK, UNSUBACK
            if len(body) != (3 if first == 0x90 else 2):
                raise MQTTError("malformed SUBACK/UNSUBACK")
            pid = body[0] << 8 | body[1]
            if pid in self._pending:
                self._pending[pid] = body[2] if first == 0x90 else 0
                self._pulse()
        elif first == 0xD0:  # PINGRESP
            if body:
                raise MQTTError("malformed PINGRESP")
        else:
            raise MQTTError("unexpected packet 0x%02x from broker" % first)

    def _incoming(self, s, first, body):
        qos = (first >> 1) & 3
        if qos > 1:
            raise MQTTError("QoS %d PUBLISH from broker (we subscribe at 0 or 1)" % qos)
        n = len(body)
        tl = (body[0] << 8 | body[1]) if n >= 2 else n
        i = 2 + tl + (2 if qos else 0)
        if i > n:
            raise MQTTError("malformed PUBLISH")
        try:
            topic = body[2 : 2 + tl].decode()
        except UnicodeError:
            raise MQTTError("PUBLISH topic is not UTF-8")
        if self.on_message is not None:
            try:
                self.on_message(topic, body[i:], bool(first & 1))
            except Exception as e:
                self._status("error", e)
        if qos:  # acknowledged after the handler ran: at least once
            s.write(b"\x40\x02" + body[i - 2 : i])
            s.push()

    async def _pinger(self, s):
        # PINGREQ when either direction has been quiet for half the keepalive; no packet at
        # all from the broker for a whole keepalive means it is gone (the TCP connection may
        # look alive for many minutes after a router or broker dies).
        ka = self._ka * 1000
        while self._s is s:
            await asyncio.sleep_ms(ka // 4)
            now = ticks_ms()
            if ticks_diff(now, self._rx) >= ka:
                self._down(s, OSError("no answer from broker within keepalive"))
                return
            if ticks_diff(now, self._rx) >= ka // 2 or ticks_diff(now, self._tx) >= ka // 2:
                if self._send(s, PINGREQ, True):
                    await self._drain(s)

    async def _flusher(self, s):
        # Sends what wait=False publishes gathered, FLUSH_MS after the first: a burst drains by
        # itself as the window fills, so this wakes a few times a second, not once per batch.
        while self._s is s:
            await self._kick.wait()
            await asyncio.sleep_ms(FLUSH_MS)
            self._kicked = False
            self._kick.clear()
            await self._drain(s)

    # -- helpers -----------------------------------------------------------------------
    def _send(self, s, pkt, now):
        # Write pkt; now: hand it to the socket at once. True when the socket is full and the
        # caller must drain (usually the socket takes it all: no coroutine, no task switch).
        # Otherwise it stays gathered for the flusher (or a full window).
        try:
            if s.write(pkt) or now:
                if s.push():
                    return True
                self._tx = ticks_ms()
            elif not self._kicked:
                self._kicked = True
                self._kick.set()
        except (OSError, EOFError) as e:
            self._down(s, e)
        return False

    async def _drain(self, s):
        try:
            await s.drain()
            self._tx = ticks_ms()
        except (OSError, EOFError) as e:
            self._down(s, e)

    async def _room(self):
        # the window is full: send what is gathered and wait for acks. Waking at the first
        # free slot (not at half a window) keeps packets flowing, and with them our TCP ACKs:
        # a broker that leaves Nagle on holds its next PUBACKs until it sees one (40 ms).
        s = self._s
        if s is not None:
            await self._drain(s)
        await self._ev.wait()

    def forget(self, pid):
        """Drop QoS 1 packet `pid` if it still waits for its PUBACK (call while disconnected):
        its owner sends what it carried again in another shape (uplink.publisher)."""
        k = pid % self._window
        if self._ipid[k] == pid:
            self._ipid[k] = 0
            self._ipkt[k] = None
            self._n -= 1
            self._pulse()

    def _pulse(self):
        # wake every task waiting on _ev (MicroPython's set() schedules them at once)
        self._ev.set()
        self._ev.clear()

    def _new_pid(self, slot=False):
        # the next id not in use; with slot, also one whose window slot is free
        pid = self._pid
        ipid, w = self._ipid, self._window
        while True:
            pid = pid % 65535 + 1
            k = ipid[pid % w]
            if (not k if slot else k != pid) and pid not in self._pending:
                self._pid = pid
                return pid

    def _release(self, pid):
        # a PUBACK: True if it freed a slot (the caller wakes the waiting publishers)
        k = pid % self._window
        if self._ipid[k] != pid:
            return False
        self._ipid[k] = 0
        self._ipkt[k] = None
        self._n -= 1
        self._acked = True
        if self.on_ack is not None:
            try:
                self.on_ack(pid)
            except Exception as e:
                self._status("error", e)
        return True

    def _status(self, event, detail):
        if self.on_status is not None:
            try:
                self.on_status(event, detail)
            except Exception:
                pass
