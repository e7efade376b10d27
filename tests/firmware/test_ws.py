# WebSocket framing: masking, the byte-stream view over frames, control frames, and a fuzz
# run of random and truncated frames (no crash, no hang: only the errors a bad server earns).
import random

from mptest import raises, randbytes
from uplink import ws


class Mem:
    """An in-memory raw stream: reads from `data`, EOFError at its end; records writes."""

    def __init__(self, data):
        self.data = data
        self.pos = 0
        self.out = []

    async def readexactly(self, n):
        if self.pos + n > len(self.data):
            raise EOFError("end of test data")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def take(self, n):
        if self.pos + n > len(self.data):
            return None
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def unread(self, n):
        self.pos -= n

    async def fill(self):
        if self.pos >= len(self.data):
            raise EOFError("end of test data")

    def write(self, buf):
        self.out.append(bytes(buf))

    def push(self):
        pass

    async def drain(self):
        pass

    def close(self):
        pass


def srv(payload, op=2, fin=True):
    """An unmasked server frame."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | op
    if n < 126:
        h = bytes((b0, n))
    elif n < 65536:
        h = bytes((b0, 126, n >> 8, n & 255))
    else:
        h = bytes((b0, 127)) + n.to_bytes(8, "big")
    return h + payload


def unmask(fr):
    # parse one client frame: check the mask bit, undo the mask byte by byte (slow is fine here)
    assert fr[0] & 0x80
    assert fr[1] & 0x80, "client frames must be masked"
    n = fr[1] & 0x7F
    i = 2
    if n == 126:
        n = int.from_bytes(fr[2:4], "big")
        i = 4
    elif n == 127:
        n = int.from_bytes(fr[2:10], "big")
        i = 10
    key = fr[i : i + 4]
    body = bytearray(memoryview(fr)[i + 4 :])
    assert len(body) == n
    for j in range(n):
        body[j] ^= key[j & 3]
    return fr[0] & 0x0F, bytes(body)


def test_mask_matches_bytewise_xor_for_every_length():
    for n in list(range(0, 70)) + [125, 126, 127, 1000, 4097]:
        buf = randbytes(n)
        key = randbytes(4)
        want = bytes(b ^ key[i % 4] for i, b in enumerate(buf))
        assert ws.mask(buf, key) == want, n
        # leading zero bytes must survive the big-integer round trip
        z = bytes(n)
        assert ws.mask(z, b"\0\0\0\0") == z


def test_frame_lengths_and_masking():
    for n in (0, 5, 125, 126, 4000):
        p = randbytes(n)
        op, body = unmask(ws.frame(p))
        assert op == 2 and body == p, n
    # a fresh key per frame
    assert ws.frame(b"abcd")[2:6] != ws.frame(b"abcd")[2:6]


def test_accept_key_rfc6455_example():
    assert ws.accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


async def test_stream_view_over_frames():
    # one frame with several packets, one packet over several frames, a fragmented message
    data = srv(b"abcdef") + srv(b"gh") + srv(b"ij", fin=False) + srv(b"kl", op=0, fin=False)
    data += srv(b"", op=0) + srv(b"m" * 300)
    s = ws.WSStream(Mem(data))
    assert await s.readexactly(2) == b"ab"
    assert await s.readexactly(5) == b"cdefg"
    assert await s.readexactly(5) == b"hijkl"
    assert await s.readexactly(300) == b"m" * 300
    with raises(EOFError):
        await s.readexactly(1)


async def test_ping_is_answered_with_pong_and_close_is_echoed():
    raw = Mem(srv(b"ab") + srv(b"hi!", op=9) + srv(b"cd") + srv(b"\x03\xe8bye", op=8))
    s = ws.WSStream(raw)
    assert await s.readexactly(4) == b"abcd"
    assert unmask(raw.out[0]) == (10, b"hi!")
    with raises(EOFError, "code 1000"):
        await s.readexactly(1)
    assert unmask(raw.out[1]) == (8, b"\x03\xe8")


async def test_protocol_violations_are_errors():
    bad = [
        srv(b"x", op=1),  # text: MQTT is binary only
        srv(b"x", op=0),  # continuation without a start
        srv(b"x", fin=False) + srv(b"y"),  # new message inside a fragmented one
        bytes((0x82, 0x81, 1, 2, 3, 4, 5)),  # masked server frame
        bytes((0xC2, 0)),  # reserved bit
        srv(b"x", op=3),  # reserved opcode
        srv(b"x" * 126, op=9),  # control frame too long
        srv(b"", op=9, fin=False),  # fragmented control frame
        bytes((0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0)),  # 64-bit length with the top bit set
    ]
    for data in bad:
        s = ws.WSStream(Mem(data + srv(b"tail")))
        with raises(ws.WSError):
            await s.readexactly(5)


async def test_handshake_checks_the_accept_key():
    def answer(accept, proto=b"mqtt", status=b"HTTP/1.1 101 Switching Protocols"):
        return (
            status + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\nSec-WebSocket-Protocol: " + proto + b"\r\n\r\n"
        )

    class Raw(Mem):
        # answers the handshake with the right key for whatever the client sent
        def __init__(self, **kw):
            super().__init__(b"")
            self.kw = kw

        def write(self, buf):
            super().write(buf)
            key = bytes(buf).split(b"Sec-WebSocket-Key: ")[1].split(b"\r\n")[0]
            acc = self.kw.pop("accept", ws.accept_key(key))
            self.data = answer(acc, **self.kw)

    st = await ws.handshake(Raw(), "h", 80, "/mqtt")
    assert isinstance(st, ws.WSStream)
    req = st._raw.out[0]
    assert req.startswith(b"GET /mqtt HTTP/1.1\r\n") and b"Sec-WebSocket-Protocol: mqtt" in req
    with raises(ws.WSError, "Accept"):
        await ws.handshake(Raw(accept=b"AAAAAAAAAAAAAAAAAAAAAAAAAAA="), "h", 80, "/")
    with raises(ws.WSError, "subprotocol"):
        await ws.handshake(Raw(proto=b"other"), "h", 80, "/")
    with raises(ws.WSError, "404"):
        await ws.handshake(Raw(status=b"HTTP/1.1 404 Not Found"), "h", 80, "/")
    with raises(ws.WSError, "too long"):  # an endless header line is cut off, not buffered
        await ws.handshake(Raw(status=b"HTTP/1.1 101 " + b"x" * 2000), "h", 80, "/")


def rnd(n):
    return random.getrandbits(16) % n  # seeded by mptest: TEST_SEED replays a failure


def mutate(data):
    b = bytearray(data)
    for _ in range(1 + rnd(4)):
        if b:
            b[rnd(len(b))] = rnd(256)
    if rnd(3) == 0:
        b = b[: rnd(len(b) + 1)]  # truncated
    return bytes(b)


async def test_fuzz_random_and_truncated_frames():
    seeds = [
        srv(b"abc") + srv(b"defgh", fin=False) + srv(b"ij", op=0) + srv(b"p", op=9),
        srv(randbytes(200)) + srv(b"", op=10) + srv(b"\x03\xe8", op=8),
    ]
    allowed = (ws.WSError, EOFError)
    for i in range(1500):
        if i % 3 == 0:
            data = randbytes(rnd(40))
        else:
            data = mutate(seeds[i % 2])
        s = ws.WSStream(Mem(data))
        try:
            for _ in range(len(data) + 2):  # each read consumes input, so this bound cannot hang
                await s.readexactly(1 + rnd(8))
        except allowed:
            pass


async def test_writes_are_gathered_into_one_frame_per_batch():
    raw = Mem(b"")
    s = ws.WSStream(raw)
    pkt = bytearray(b"\x32\x05\x00\x01t\x00\x01")
    s.write(pkt)
    pkt[0] |= 8  # the client sets DUP right after writing: the first send must not show it
    s.write(b"\x30\x03\x00\x01u")
    assert raw.out == []  # nothing framed before the batch ends
    await s.drain()
    assert [unmask(f) for f in raw.out] == [(2, b"\x32\x05\x00\x01t\x00\x01\x30\x03\x00\x01u")]
    big = randbytes(ws.GATHER + 1)
    s.write(b"a")
    s.write(big)  # too big to gather: what was gathered goes first, then its own frame
    s.push()
    assert [unmask(f) for f in raw.out[1:]] == [(2, b"a"), (2, big)]


async def test_gathered_batches_of_every_header_size_unmask_to_what_was_written():
    # the frame is built in place in the gather buffer: the 2-byte header up to 125 bytes, the
    # 4-byte one above; odd lengths, the exact buffer size and a batch right after another
    # (the buffer still holds the last batch's masked bytes) must all come out whole
    raw = Mem(b"")
    s = ws.WSStream(raw)
    sizes = (1, 125, 126, 127, 255, 1001, ws.GATHER - 1, ws.GATHER)
    sent = []
    for n in sizes:
        data = randbytes(n)
        cut = random.randint(0, n)
        s.write(data[:cut])  # a batch is often several packets
        s.write(data[cut:])
        await s.drain()
        sent.append((2, data))
    assert [unmask(f) for f in raw.out] == sent


async def test_a_memory_error_while_sending_a_batch_loses_nothing_and_masks_nothing_twice():
    # a fragmented heap can fail the masking's integer work half way, or the hand-over to the
    # socket: the batch stays, and the next drain goes on where it stopped, with the same key
    class Flaky(Mem):
        fail = 0

        def write(self, buf):
            if self.fail:
                self.fail -= 1
                raise MemoryError("memory allocation failed")
            super().write(buf)

    raw = Flaky(b"")
    s = ws.WSStream(raw)
    data = randbytes(ws.CHUNK + 10)  # one whole chunk, then a tail masked by mask()
    s.write(data)
    real = ws.mask
    calls = [0]

    def failing_once(buf, key):
        calls[0] += 1
        if calls[0] == 1:
            raise MemoryError("memory allocation failed")
        return real(buf, key)

    ws.mask = failing_once  # the tail's masking fails the first time
    try:
        with raises(MemoryError):
            await s.drain()
    finally:
        ws.mask = real
    raw.fail = 1  # then the socket hand-over fails once
    with raises(MemoryError):
        await s.drain()
    await s.drain()
    s.write(b"after")  # the next batch is a frame of its own
    await s.drain()
    assert [unmask(f) for f in raw.out] == [(2, data), (2, b"after")]
