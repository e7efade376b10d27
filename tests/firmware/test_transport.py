# The byte stream under MQTT: bytes written by several tasks while the socket is full are
# neither lost nor reordered (per writer), and reads across the buffer edge are exact; TLS
# connects reuse one context per CA and leave no socket open when the handshake fails; a refused
# connect is told at the connect, on the ESP32 too.
import asyncio
import io
import os
import select
import socket

from mptest import env, raises, randbytes
from test_mqtt_broker import serve_on_free_port
from uplink import mqtt, transport

NEEDS = ("broker",)
HOST = env("BROKER_HOST", "localhost")


def open_fds():
    # the process's open file descriptors: every socket the firmware forgot to close is one
    return len(os.listdir("/proc/self/fd"))


async def test_writes_while_a_drain_waits_are_not_lost():
    go = asyncio.Event()
    done = asyncio.Event()
    seen = [0, 0, 0]  # A records, B records, bytes

    async def serve(r, w):
        # checks records as they arrive: each writer's must come whole and in order
        await go.wait()  # read nothing until the client's socket is full
        while seen[0] < 300 or seen[1] < 200:
            head = await r.readexactly(6)
            k = 0 if head[0] == 65 else 1  # "A....." or "B....."
            assert head == (b"A%05d", b"B%05d")[k] % seen[k], (head, seen)
            if not k:
                await r.readexactly(994)
            seen[k] += 1
            seen[2] += 1000 if not k else 6
        done.set()

    port, srv = await serve_on_free_port(serve)
    try:
        s = await transport.open_tcp("127.0.0.1", port)
        s._s.setsockopt(1, 7, 4096)  # SOL_SOCKET, SO_SNDBUF: fill up sooner

        async def writer_a():
            for i in range(300):  # 300 KB: more than both sockets' buffers hold
                if s.write(b"A%05d" % i + bytes(994)):
                    await s.drain()
            await s.drain()

        async def writer_b():
            for i in range(200):
                s.write(b"B%05d" % i)
                s.push()  # like the reader answering a QoS 1 PUBLISH mid-drain
                if i % 10 == 9:
                    await s.drain()
                await asyncio.sleep_ms(1)

        async def run():
            ta = asyncio.create_task(writer_a())
            tb = asyncio.create_task(writer_b())
            await asyncio.sleep_ms(100)
            go.set()
            await ta
            await tb
            await s.drain()
            await done.wait()
            s.close()

        try:
            await asyncio.wait_for_ms(run(), 20000)
        except asyncio.TimeoutError:
            raise AssertionError("stalled: %r, stream %r" % (seen, (s._stuck, s._draining, len(s._more), s._w)))
    finally:
        srv.close()
    assert seen == [300, 200, 300 * 1000 + 200 * 6], seen


async def test_reads_across_the_buffer_edge():
    data = randbytes(3000)

    async def serve(r, w):
        w.write(data)
        await w.drain()
        await asyncio.sleep_ms(200)

    port, srv = await serve_on_free_port(serve)
    try:
        s = await transport.open_tcp("127.0.0.1", port)
        out = []
        for n in (1, 2, 509, 4, 700, 1000, 3, 781):  # 3000 in all, crossing RBUF edges
            out.append(await s.readexactly(n))
        assert b"".join(out) == data
        s.close()
    finally:
        srv.close()


async def test_failed_tls_handshakes_leave_no_socket_open():
    # wrong CA (refused inside the first read/write) and wrong name, 5 times each, over mqtts
    # and wss; no gc.collect() in between: a finaliser must not be what closes them
    port = env("BROKER_MQTTS_PORT")
    for url, ca in (
        ("mqtts://%s:%s" % (HOST, port), env("BROKER_WRONG_CA_DER")),
        ("wss://%s:%s/mqtt" % (HOST, env("BROKER_WSS_PORT")), env("BROKER_WRONG_CA_DER")),
        ("mqtts://127.0.0.2:%s" % port, env("BROKER_CA_DER")),
    ):
        before = open_fds()
        for _ in range(5):
            c = mqtt.MQTTClient(url, "x", ca=ca)
            with raises(OSError):
                await c.connect()
        assert open_fds() == before, (url, before, open_fds())


async def test_a_closed_tls_stream_closes_its_tcp_socket():
    before = open_fds()
    ctx = transport.tls_context(env("BROKER_WRONG_CA_DER"))
    s = await transport.open_tcp("127.0.0.1", int(env("BROKER_MQTTS_PORT")), ssl_ctx=ctx, server_hostname="localhost")
    s.write(b"\xc0\x00")
    with raises(OSError, "not correctly signed"):
        await s.drain()
        await s.readexactly(1)
    assert open_fds() == before + 1
    s.close()
    assert open_fds() == before


class CountingSSL:
    # stands in for the `ssl` module inside transport: counts the contexts made
    def __init__(self, real):
        self.real = real
        self.made = 0

    def __getattr__(self, name):
        return getattr(self.real, name)

    def SSLContext(self, proto):
        self.made += 1
        return self.real.SSLContext(proto)


async def test_reconnects_reuse_one_tls_context_per_ca():
    real = transport.ssl
    transport.ssl = counting = CountingSSL(real)
    transport._ctx.clear()
    try:
        url = "mqtts://%s:%s" % (HOST, env("BROKER_MQTTS_PORT"))
        c = mqtt.MQTTClient(url, "ctx-" + "".join("%02x" % b for b in os.urandom(4)), ca=env("BROKER_CA_DER"))
        for _ in range(3):
            await c.connect()
            assert c.is_connected
            await c.publish("ctx/test", b"x", qos=1)  # the CA still checks the server each time
            await c.disconnect()
        assert counting.made == 1, counting.made
        # a wrong CA is its own context, and is still refused after the good one was cached
        bad = mqtt.MQTTClient(url, "x", ca=env("BROKER_WRONG_CA_DER"))
        for _ in range(2):
            with raises(OSError, "not correctly signed"):
                await bad.connect()
        assert counting.made == 2, counting.made
        assert transport.tls_context(env("BROKER_CA_DER")) is transport.tls_context(env("BROKER_CA_DER"))
        assert len(transport._ctx) <= 2
    finally:
        transport.ssl = real


class Esp32Socket(io.IOBase):
    """A socket polled as on the ESP32 (ports/esp32/modsocket.c, socket_stream_ioctl: lwIP's
    select() with the exception set only when POLLHUP is asked for). A connect that failed is
    readable and writable there (lwIP's err_tcp wakes both), and in the exception set: HUP."""

    def __init__(self, *args):
        self.s = socket.socket(*args)
        self.p = select.poll()
        self.p.register(self.s, select.POLLIN | select.POLLOUT)  # (the unix port adds ERR and HUP)

    def ioctl(self, req, arg):
        if req == 3:  # MP_STREAM_POLL
            ev = 0
            for _, ev in self.p.poll(0):
                pass
            failed = ev & (select.POLLERR | select.POLLHUP)
            r = 0
            for want in (select.POLLIN, select.POLLOUT):
                if arg & want and (ev & want or failed):
                    r |= want
            return r | (select.POLLHUP if arg & select.POLLHUP and failed else 0)
        if req == 4:  # MP_STREAM_CLOSE
            self.s.close()
            return 0
        return -22  # no fileno (MP_STREAM_GET_FILENO): poll asks ioctl, as for lwIP's sockets

    def __getattr__(self, name):  # connect, setblocking, recv, readinto, write, close
        return getattr(self.s, name)


class Esp32Sockets:
    # stands in for the `socket` module inside transport
    SOCK_STREAM = socket.SOCK_STREAM
    getaddrinfo = staticmethod(socket.getaddrinfo)
    socket = Esp32Socket


async def test_a_refused_connect_is_named_at_connect_as_on_the_esp32():
    transport.socket = Esp32Sockets
    try:
        # nothing listens on port 9: before, the ESP32's poll said writable and the connect
        # "succeeded"; the refusal came later as a vague error on the first read
        with raises(OSError, "connection refused by 127.0.0.1:9"):
            await transport.open_tcp("127.0.0.1", 9)
        s = await transport.open_tcp(HOST, int(env("BROKER_MQTT_PORT")))  # a broker: connected
        s.close()
    finally:
        transport.socket = socket
