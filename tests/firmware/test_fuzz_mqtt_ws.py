# Fuzzing the MQTT and WebSocket decoders beyond test_mqtt_codec.py / test_ws.py (which feed
# each fresh client one short random or truncated input): here the PRNG is seeded (a failure
# can be replayed: FUZZ_SEED, FUZZ_CASES), the heap is checked after thousands of cases, and
# the properties are stronger:
# - one long-lived client reads long streams of valid packets with a mutation somewhere:
#   every message before the first mutated byte is delivered exactly, QoS 1 ones are
#   acknowledged, then the connection drops with MQTTError/EOFError (never another error,
#   never a hang), and the client's state stays bounded across hundreds of drops;
# - read_packet over a long random byte stream: every body within max_packet, always
#   progress, only MQTTError/EOFError at the end;
# - MQTT over WebSocket: a packet stream cut into random frames (continuations, pings, empty
#   frames) reads back exactly; mutated frames give only WSError/EOFError/MQTTError;
# - the WebSocket upgrade answer, mutated: only WSError/EOFError, and success only when the
#   answer is still valid.
import gc
import random

from mptest import SeededOS, env, heapsize
from test_ws import Mem, srv
from uplink import mqtt, ws

SEED = int(env("FUZZ_SEED", "8"))
CASES = int(env("FUZZ_CASES", "2000"))
TOPICS = ["a", "v1/devices/me/rpc/request/1", "downlink/ds/V1", "", "\u00e9/\u2603", "x" * 100]


def rnd(n):
    return random.getrandbits(16) % n if n else 0


def rbytes(n):
    return bytes(random.getrandbits(8) for _ in range(n))


def client():
    c = mqtt.MQTTClient("mqtt://h", "fuzz", max_packet=512)
    c.got = []
    c.events = []
    c.on_message = lambda t, p, r: c.got.append((t, bytes(p), r))
    c.on_status = lambda e, d: c.events.append((e, d))
    return c


def packet():
    """(bytes, the message it delivers or None)"""
    r = rnd(5)
    if r <= 1:
        qos = rnd(2)
        t = TOPICS[rnd(len(TOPICS))]
        p = rbytes(rnd(60))
        retain = bool(rnd(2))
        return bytes(mqtt.publish_packet(t, p, qos, retain, 1 + rnd(65535))), (t, p, retain)
    if r == 2:
        return b"\x40\x02" + rbytes(2), None  # PUBACK for an id we may not have sent
    if r == 3:
        return b"\xd0\x00", None  # PINGRESP
    return b"\xb0\x02" + rbytes(2), None  # UNSUBACK nobody waits for


def stream():
    pkts = [packet() for _ in range(1 + rnd(30))]
    data = bytearray(b"".join(p for p, _ in pkts))
    cut = len(data)
    if rnd(4):  # mutate from some point on (a bit flip, garbage, a truncation)
        cut = rnd(len(data))
        r = rnd(3)
        if r == 0:
            data[cut] ^= 1 << rnd(8)
        elif r == 1:
            data[cut:] = rbytes(rnd(20))
        else:
            data = data[:cut]
    # the messages wholly before the first changed byte must arrive, exactly
    want, at = [], 0
    for p, m in pkts:
        at += len(p)
        if at > cut:
            break
        if m is not None:
            want.append(m)
    return bytes(data), want


@heapsize("128k")  # the test's own streams (up to ~5 KB each) fragment a 96k heap
async def test_fuzz_one_client_long_streams_with_a_mutation():
    random.seed(SEED)
    c = client()
    qos1 = 0

    async def one():
        data, want = stream()
        c.got.clear()
        s = Mem(data)
        c._s = s
        await c._reader(s)  # returns when the connection drops: the data ended or was bad
        e, d = c.events[-1]
        assert e == "disconnected", (e, data)
        assert isinstance(d, (mqtt.MQTTError, EOFError)), (repr(d), data)
        assert c.got[: len(want)] == want, (want, c.got, data)
        assert c._s is None and s.pos <= len(data)
        return sum(1 for o in s.out if o[:2] == b"\x40\x02")  # PUBACKs the client wrote

    for _ in range(30):
        await one()
        c.events.clear()
    gc.collect()
    before = gc.mem_free()
    for i in range(CASES // 4):
        qos1 += await one()
        c.events.clear()  # (each holds an exception and its traceback)
    c.got.clear()
    gc.collect()
    grown = before - gc.mem_free()
    print("mqtt stream fuzz: %d streams, %d QoS 1 acknowledged, heap +%d" % (CASES // 4, qos1, grown))
    assert qos1 > 0
    assert grown < 2048, "the client kept %d bytes of the broker's garbage" % grown


async def test_fuzz_read_packet_over_a_random_byte_stream():
    random.seed(SEED + 1)
    seen = 0
    for _ in range(CASES // 10):
        data = rbytes(rnd(400))
        s = Mem(data)
        last = -1
        while True:
            try:
                first, body = await mqtt.read_packet(s, 256)
            except (mqtt.MQTTError, EOFError):
                break
            assert len(body) <= 256, len(body)
            assert s.pos > last, "no progress"
            last = s.pos
            seen += 1
    assert seen > 0


def frames_of(data):
    """data cut into random WebSocket frames: a message of 1..3 frames (continuations),
    empty frames, pings and pongs in between."""
    out = bytearray()
    i = 0
    while i < len(data):
        n = 1 + rnd(40)
        parts = []
        for _ in range(1 + rnd(3)):
            k = min(rnd(n + 1), len(data) - i)
            parts.append(data[i : i + k])
            i += k
        for j, p in enumerate(parts):
            out += srv(p, op=2 if j == 0 else 0, fin=j == len(parts) - 1)
            if rnd(5) == 0 and j < len(parts) - 1:
                out += srv(rbytes(rnd(10)), op=9 + rnd(2))  # a control frame inside a message
    return bytes(out)


async def test_fuzz_mqtt_over_websocket_frames():
    random.seed(SEED + 2)
    exact = bad = 0
    b = None
    before = 0
    for i in range(CASES // 4 + 20):
        if i == 20:  # after a warm-up: buffers a module allocates once are not growth
            pkts = wire = s = b = None
            gc.collect()
            before = gc.mem_free()
        pkts = [packet()[0] for _ in range(1 + rnd(8))]
        wire = frames_of(b"".join(pkts))
        if i % 2:  # mutated: only the decoders' own errors
            b = bytearray(wire)
            for _ in range(1 + rnd(3)):
                b[rnd(len(b))] = random.getrandbits(8)
            s = ws.WSStream(Mem(bytes(b[: rnd(len(b) + 1)] if rnd(2) else b)))
            try:
                for _ in range(len(b) + 1):  # each read consumes input: bounded
                    await mqtt.read_packet(s, 512)
            except (ws.WSError, EOFError, mqtt.MQTTError):
                bad += 1
            continue
        s = ws.WSStream(Mem(wire))
        for p in pkts:  # the same packets come back, whatever the framing
            first, body = await mqtt.read_packet(s, 512)
            assert bytes([first]) == p[:1] and p.endswith(body), (p, first, body)
        exact += 1
    pkts = wire = s = b = None
    gc.collect()
    grown = before - gc.mem_free()
    print("mqtt-over-ws fuzz: %d exact, %d mutated refused, heap +%d" % (exact, bad, grown))
    assert grown < 2048, "heap grew by %d bytes" % grown


def answer(key, mutate):
    """The server's upgrade answer as a list of pieces, as a socket delivers segments. Pieces,
    not one buffer: the long-headers case is up to ~3 KB, and a 3 KB contiguous block is
    more than a fragmented 96k heap can promise (the handshake itself reads line by line,
    at most ws.MAX_LINE bytes at a time, and needs no such block)."""
    good = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + ws.accept_key(key) + b"\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n")
    if not mutate:
        return [good]
    r = rnd(4)
    if r == 0:
        b = bytearray(good)
        for _ in range(1 + rnd(3)):
            b[rnd(len(b))] = random.getrandbits(8)
        return [bytes(b)]
    if r == 1:
        return [good[: rnd(len(good))]]
    if r == 2:  # many or long header lines
        i = good.index(b"\r\n") + 2
        line = b"X-" + rbytes(rnd(100)).replace(b"\n", b"") + b": y\r\n"
        return [good[:i]] + [line] * rnd(30) + [good[i:]]
    return [rbytes(rnd(200))]


async def test_fuzz_websocket_upgrade_answers():
    random.seed(SEED + 3)
    ws.os = SeededOS()  # the client's Sec-WebSocket-Key follows the seed too
    ok = refused = 0

    class Raw(Mem):
        def __init__(self, mutate):
            super().__init__(b"")
            self.mutate = mutate
            self.pieces = []

        def write(self, buf):
            super().write(buf)
            self.key = bytes(buf).split(b"Sec-WebSocket-Key: ")[1].split(b"\r\n")[0]
            self.pieces = answer(self.key, self.mutate)
            self.sent = list(self.pieces)

        async def readexactly(self, n):
            while self.pos + n > len(self.data) and self.pieces:
                self.data = self.data[self.pos :] + self.pieces.pop(0)
                self.pos = 0
            return await super().readexactly(n)

    for i in range(CASES // 8):
        raw = Raw(i % 5 != 0)
        try:
            st = await ws.handshake(raw, "h", 80, "/mqtt")
        except (ws.WSError, EOFError):
            refused += 1
            continue
        assert isinstance(st, ws.WSStream)
        # accepted only if the answer still carries the right key for our request
        want = b"Sec-WebSocket-Accept: " + ws.accept_key(raw.key)
        assert any(want in p for p in raw.sent), raw.sent
        ok += 1
    print("ws upgrade fuzz: %d accepted, %d refused" % (ok, refused))
    assert ok >= CASES // 40 and refused
