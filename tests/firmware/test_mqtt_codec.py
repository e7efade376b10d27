# MQTT packet building and parsing without a broker: exact bytes of PUBLISH/CONNECT, the
# decoder's limits, and a fuzz run of random and truncated packets through the client's reader
# (no crash, no hang, no unbounded allocation: only MQTTError/EOFError, connection dropped).
import asyncio
import gc
import random

from mptest import raises, randbytes
from test_ws import Mem
from uplink import mqtt


def hold(c, pid):
    # a QoS 1 packet in flight, as publish() leaves it
    c._ipid[pid % c._window] = pid
    c._ipkt[pid % c._window] = bytearray(b"x")
    c._n += 1


def rl(n):
    return bytes(mqtt._varint(n))


def test_publish_packet_bytes():
    p = mqtt.publish_packet("a/b", b"hi", 0, False, 0)
    assert bytes(p) == b"\x30\x07\x00\x03a/bhi"
    p = mqtt.publish_packet("t", b"x", 1, True, 0x1234)
    assert bytes(p) == b"\x33\x06\x00\x01t\x12\x34x"
    for n in (120, 121, 122, 123, 4000):
        gc.collect()
        p = mqtt.publish_packet("t", bytes(n), 1, False, 1)
        body = 2 + 1 + 2 + n
        assert bytes(p[: 1 + len(rl(body))]) == b"\x32" + rl(body), n
        assert len(p) == 1 + len(rl(body)) + body
    assert rl(127) == b"\x7f" and rl(128) == b"\x80\x01" and rl(16384) == b"\x80\x80\x01"
    assert rl(268435455) == b"\xff\xff\xff\x7f"


def test_connect_packet_fields():
    c = mqtt.MQTTClient("mqtt://h", "dev1", keepalive=30, will=("w/t", b"gone", True, 1))
    p = c._connect_packet("u", "secret")
    assert p[0] == 0x10
    assert p[2:10] == b"\x00\x04MQTT\x04" + bytes((0x80 | 0x40 | 0x20 | 0x08 | 0x04 | 0x02,))
    assert p[10:12] == b"\x00\x1e"
    assert p.endswith(b"\x00\x04dev1\x00\x03w/t\x00\x04gone\x00\x01u\x00\x06secret")
    # a password alone is sent with an empty user name (3.1.1 needs the user flag)
    p = c._connect_packet(None, "tok")
    assert p.endswith(b"\x00\x00\x00\x03tok")


async def test_read_packet_limits():
    s = Mem(b"\x40\x02\x00\x07" + b"\x30" + rl(300) + bytes(300))
    assert await mqtt.read_packet(s, 1000) == (0x40, b"\x00\x07")
    assert (await mqtt.read_packet(s, 1000))[1] == bytes(300)
    # over max_packet: refused before the body is read or allocated
    s = Mem(b"\x90" + rl(268435455))
    with raises(mqtt.MQTTError, "max_packet"):
        await mqtt.read_packet(s, 4096)
    # a PUBLISH over it is read past in small pieces (never held whole) and dropped
    s = Mem(b"\x32" + rl(5000) + b"\x00\x03a/b\x00\x07" + bytes(4993) + b"\xd0\x00")
    with raises(mqtt.Oversize, "message of 5000 bytes on a/b dropped: over max_packet 4096") as r:
        await mqtt.read_packet(s, 4096)
    assert r.value.ack == b"\x00\x07"
    assert await mqtt.read_packet(s, 4096) == (0xD0, b"")  # the stream is still in step
    with raises(mqtt.MQTTError, "remaining length"):
        await mqtt.read_packet(Mem(b"\x30\xff\xff\xff\xff\x01"), 4096)
    with raises(EOFError):
        await mqtt.read_packet(Mem(b"\x30\x05abc"), 4096)


def client():
    c = mqtt.MQTTClient("mqtt://h", "fuzz", max_packet=512)
    c.got = []
    c.events = []
    c.on_message = lambda t, p, r: c.got.append((t, p, r))
    c.on_status = lambda e, d: c.events.append((e, d))
    return c


async def test_reader_handles_acks_messages_and_answers_qos1():
    c = client()
    hold(c, 5)
    acks = []
    c.on_ack = acks.append
    pub1 = b"\x32" + rl(2 + 3 + 2 + 2) + b"\x00\x03a/b\x00\x09hi"
    data = b"\x40\x02\x00\x05" + b"\x31\x06\x00\x01tabc" + pub1 + b"\xd0\x00"
    s = Mem(data)
    c._s = s
    await c._reader(s)  # ends at the end of data: EOFError, connection dropped
    assert acks == [5] and not c._n
    assert c.got == [("t", b"abc", True), ("a/b", b"hi", False)]
    assert s.out == [b"\x40\x02\x00\x09"]  # PUBACK for the QoS 1 message
    assert c.events[-1][0] == "disconnected" and isinstance(c.events[-1][1], EOFError)
    assert not c.is_connected


async def test_an_oversize_downlink_is_acknowledged_and_dropped_and_the_link_stays_up():
    c = client()  # max_packet 512
    big = b"\x32" + rl(2 + 3 + 2 + 600) + b"\x00\x03a/b\x00\x0b" + bytes(600)
    small = b"\x30\x05\x00\x01tok"
    s = Mem(big + small)
    c._s = s
    await c._reader(s)  # ends at the end of data
    assert c.got == [("t", b"ok", False)]  # the next message still arrives
    assert s.out == [b"\x40\x02\x00\x0b"]  # the big one acknowledged: not sent again
    errs = [d for e, d in c.events if e == "error"]
    assert len(errs) == 1 and "607 bytes on a/b dropped: over max_packet 512" in str(errs[0]), errs
    assert isinstance(c.events[-1][1], EOFError)  # dropped only by the end of the data


async def test_malformed_packets_drop_the_connection_with_an_error():
    bad = [
        b"\x40\x03\x00\x01\x02",  # PUBACK of the wrong size
        b"\x34\x05\x00\x01t\x00\x01",  # QoS 2 PUBLISH
        b"\x30\x01\x00",  # topic length missing
        b"\x30\x03\x00\x09a",  # topic longer than the packet
        b"\x32\x04\x00\x01t\x00",  # packet id cut short
        b"\x30\x04\x00\x02\xff\xfe",  # topic not UTF-8
        b"\x20\x02\x00\x00",  # CONNACK once connected
        b"\xd0\x01\x00",  # PINGRESP with a body
        b"\xf0\x00",  # reserved type
        b"\x90" + rl(513) + bytes(513),  # over max_packet (not a PUBLISH: cannot be skipped)
        b"\x30" + rl(600) + b"\x01\x2c" + bytes(598),  # an oversize PUBLISH whose topic is absurd
    ]
    for data in bad:
        c = client()
        s = Mem(data + b"\xd0\x00")
        c._s = s
        await c._reader(s)
        e, d = c.events[-1]
        assert e == "disconnected" and isinstance(d, mqtt.MQTTError), (data, d)
        assert not c.got


def rnd(n):
    return random.getrandbits(16) % n  # seeded by mptest: TEST_SEED replays a failure


async def test_fuzz_random_and_truncated_packets():
    seeds = [
        b"\x40\x02\x00\x05",
        b"\x31\x06\x00\x01tabc",
        b"\x32\x09\x00\x03a/b\x00\x09hi",
        b"\x90\x03\x00\x02\x01",
        b"\xb0\x02\x00\x03",
        b"\xd0\x00",
        b"\x30\x82\x01" + bytes(130),
    ]
    for i in range(2500):
        if i % 4 == 0:
            data = randbytes(rnd(30))
        else:
            b = bytearray(b"".join(seeds[rnd(len(seeds))] for _ in range(1 + rnd(4))))
            for _ in range(rnd(4)):
                b[rnd(len(b))] = rnd(256)
            data = bytes(b[: rnd(len(b) + 1)] if rnd(2) else b)
        c = client()
        hold(c, 5)
        c._pending[2] = None
        s = Mem(data)
        c._s = s
        await c._reader(s)  # must return (connection dropped), never raise or hang
        e, d = c.events[-1]
        assert e == "disconnected", e
        assert isinstance(d, (mqtt.MQTTError, EOFError)), repr(d)
        assert s.pos <= len(data)


class Quiet(Mem):
    """Like Mem, but at the end of the data it waits (a live connection with nothing to say)."""

    async def readexactly(self, n):
        if self.pos + n > len(self.data):
            await asyncio.sleep(60)
        return await super().readexactly(n)

    async def fill(self):
        await asyncio.sleep(60)  # everything there is, is already buffered


async def test_short_and_split_packets_are_handled_without_more_data():
    # a lone PINGRESP must not wait for a following packet (the keepalive would call the
    # broker dead), nor a PUBACK split over two WebSocket frames
    from test_ws import srv
    from uplink import ws

    cases = (
        (lambda: Quiet(b"\xd0\x00"), "rx"),
        (lambda: Quiet(b"\x40\x02\x00\x05\xd0\x00"), "rx"),
        (lambda: ws.WSStream(Quiet(srv(b"\x40\x02") + srv(b"\x00\x05"))), "ack"),
        (lambda: ws.WSStream(Quiet(srv(b"\xd0") + srv(b"\x00"))), "rx"),
    )
    for make, what in cases:
        c = client()
        hold(c, 5)
        s = make()
        c._s = s
        rx = []
        handle = c._handle

        def counting(s, first, body, handle=handle):  # the slow-path packets, in order
            rx.append(first)
            handle(s, first, body)

        c._handle = counting
        t = asyncio.create_task(c._reader(s))
        await asyncio.sleep_ms(50)
        if what == "ack":
            assert not c._n, "PUBACK split over frames not handled"
        else:
            assert rx[-1:] == [0xD0], "PINGRESP not handled: %r" % rx
        t.cancel()
