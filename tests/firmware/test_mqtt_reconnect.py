# Reconnecting: what the log says about a broker that accepts TCP but never answers CONNECT,
# and kick() ending a long backoff at once when the network comes back.
import asyncio
import time

from test_mqtt_broker import client, serve_on_free_port, until, url
from uplink import mqtt

NEEDS = ("broker",)


async def serve(answer):
    # loopback: reads the CONNECT and sends answer, or with None says nothing at all
    async def accept(r, w):
        if answer is not None:
            await r.read(256)
            w.write(answer)
            await w.drain()
        await asyncio.sleep_ms(60000)

    port, srv = await serve_on_free_port(accept)
    return srv, port


async def test_a_broker_that_never_answers_connect_is_named_in_the_error():
    srv, port = await serve(None)
    try:
        c = mqtt.MQTTClient("mqtt://127.0.0.1:%d" % port, "silent")
        c.connect_timeout_ms = 1000
        try:
            await c.connect()
            raise AssertionError("connected to a silent server")
        except mqtt.MQTTError as e:
            assert str(e) == "no CONNACK within 1 s", str(e)
        # the same reason in the status the app logs while it retries
        events = []
        c.on_status = lambda ev, d: events.append((ev, str(d)))
        c.backoff_min_ms = 60000
        t = asyncio.create_task(c.connect(retry=True))
        await until(lambda: events)
        t.cancel()
        assert events[0] == ("error", "no CONNACK within 1 s"), events
    finally:
        srv.close()


async def test_kick_ends_the_backoff_at_once():
    c = client("mqtt", "kick")
    c.set_url("mqtt://127.0.0.1:1")  # refused: the first attempt fails
    c.backoff_min_ms = c.backoff_max_ms = 120000  # the next would be a minute away or more
    t = asyncio.create_task(c.connect(retry=True))
    await until(lambda: len(c.events) >= 2)
    assert [e for e, _ in c.events] == ["error", "backoff"], c.events
    assert c.events[1][1] >= 60, c.events
    c.set_url(url("mqtt"))  # the network is back
    c.kick()
    await until(lambda: c.is_connected, 3000)
    await t
    await c.disconnect()


async def test_kick_does_not_shorten_the_wait_after_a_refused_login():
    srv, port = await serve(b"\x20\x02\x00\x05")  # CONNACK 5: not authorized
    try:
        c = client("mqtt", "kick-auth")
        at = []
        c.on_status = lambda e, d: (c.events.append((e, d)), at.append(time.ticks_ms()))
        c.set_url("mqtt://127.0.0.1:%d" % port)
        c.auth_backoff_ms = 1000  # jittered: 0.5 to 1 s
        t = asyncio.create_task(c.connect(retry=True))
        await until(lambda: [e for e, _ in c.events] == ["auth_error", "backoff"])
        c.set_url(url("mqtt"))  # a kick here would connect at once
        c.kick()
        # the sentinel: the next attempt, when the backoff ends; the kick must not bring it sooner
        await until(lambda: c.is_connected, 5000)
        assert [e for e, _ in c.events] == ["auth_error", "backoff", "connected"], c.events
        waited = time.ticks_diff(at[2], at[1])
        assert waited >= round(c.events[1][1] * 1000) - 1, (waited, c.events)
        await t
        await c.disconnect()
    finally:
        srv.close()
