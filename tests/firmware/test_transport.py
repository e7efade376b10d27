# The byte stream under MQTT: bytes written by several tasks while the socket is full are
# neither lost nor reordered (per writer), and reads across the buffer edge are exact.
import asyncio

from mptest import randbytes
from test_mqtt_broker import serve_on_free_port
from uplink import transport


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
