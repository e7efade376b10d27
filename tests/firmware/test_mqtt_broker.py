# The client against the session's real mosquitto on every scheme: round trips, TLS refusals,
# subscriptions restored and QoS 1 resent after a dropped connection, oversize input.
import asyncio
import os

from mptest import env, raises, randbytes
from uplink import mqtt, transport

NEEDS = ("broker",)
HOST = env("BROKER_HOST", "localhost")
CA = env("BROKER_CA_DER")
PORTS = {
    "mqtt": env("BROKER_MQTT_PORT"),
    "mqtts": env("BROKER_MQTTS_PORT"),
    "ws": env("BROKER_WS_PORT"),
    "wss": env("BROKER_WSS_PORT"),
}


def url(scheme, host=HOST):
    return "%s://%s:%s%s" % (scheme, host, PORTS[scheme], "/mqtt" if scheme[:2] == "ws" else "")


def uid():
    return "".join("%02x" % b for b in os.urandom(4))


def client(scheme, name, **kw):
    c = mqtt.MQTTClient(url(scheme), name + "-" + uid(), ca=CA, **kw)
    c.got = []
    c.events = []
    c.on_message = lambda t, p, r: c.got.append((t, p, r))
    c.on_status = lambda e, d: c.events.append((e, d))
    return c


async def until(cond, ms=5000):
    for _ in range(ms // 10):
        if cond():
            return
        await asyncio.sleep_ms(10)
    raise AssertionError("condition not met within %d ms" % ms)


async def round_trip(scheme):
    c = client(scheme, scheme)
    await c.connect()
    assert c.is_connected
    topic = "rt/%s/%s" % (scheme, uid())
    await c.subscribe(topic, 1)
    big = randbytes(3000)  # larger than the stream buffers and than one WS chunk
    pid = await c.publish(topic, b"q1", qos=1)
    assert pid > 0
    await c.publish(topic, big, qos=0)
    await c.publish(topic, "retained", qos=1, retain=True)
    await until(lambda: len(c.got) >= 3)
    assert c.got[0] == (topic, b"q1", False)
    assert c.got[1] == (topic, big, False)
    assert c.got[2] == (topic, b"retained", False)
    # a second subscriber sees the retained flag on the stored message
    d = client(scheme, scheme + "-2")
    await d.connect()
    await d.subscribe(topic, 0)
    await until(lambda: d.got)
    assert d.got[0] == (topic, b"retained", True)
    await d.publish(topic, b"", qos=1, retain=True)  # clear it
    await d.disconnect()
    await until(lambda: len(c.got) == 4)
    await c.unsubscribe(topic)
    mark = topic + "-mark"
    await c.subscribe(mark, 1)
    await c.publish(topic, b"after", qos=1)
    # the sentinel: published after "after" on one connection at QoS 1, so mosquitto routes
    # (and would deliver) them in that order
    await c.publish(mark, b"mark", qos=1)
    await until(lambda: len(c.got) > 4)
    assert c.got[4:] == [(mark, b"mark", False)], c.got[4:]
    await c.disconnect()
    assert not c.is_connected
    assert [e for e, _ in c.events] == ["connected", "disconnected"]


async def test_round_trip_mqtt():
    await round_trip("mqtt")


async def test_round_trip_mqtts():
    await round_trip("mqtts")


async def test_round_trip_ws():
    await round_trip("ws")


async def test_round_trip_wss():
    await round_trip("wss")


async def test_wrong_ca_is_refused():
    for scheme in ("mqtts", "wss"):
        c = mqtt.MQTTClient(url(scheme), "x", ca=env("BROKER_WRONG_CA_DER"))
        with raises(OSError, "not correctly signed"):
            await c.connect()
        assert not c.is_connected


async def test_wrong_hostname_is_refused():
    # the certificate names localhost and 127.0.0.1; ask for another name at the same address
    ctx = transport.tls_context(CA)
    s = await transport.open_tcp("127.0.0.1", int(PORTS["mqtts"]), ssl_ctx=ctx, server_hostname="broker.example")
    s.write(b"\xc0\x00")
    with raises(OSError, "CN"):
        await s.drain()
        await s.readexactly(1)
    s.close()
    # the same through a URL whose host is not in the certificate
    c = mqtt.MQTTClient("mqtts://127.0.0.2:%s" % PORTS["mqtts"], "x", ca=CA)
    with raises(OSError):
        await c.connect()


async def test_tls_needs_a_ca_unless_insecure():
    with raises(ValueError, "CA"):
        await transport.open_stream(url("mqtts"))
    s = await transport.open_stream(url("mqtts"), insecure=True)  # prints a warning
    s.write(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")
    await s.drain()
    assert await s.readexactly(4) == b"\x20\x02\x00\x00"
    s.close()


async def test_connection_refused_is_oserror():
    c = mqtt.MQTTClient("mqtt://127.0.0.1:1", "x")
    with raises(OSError):
        await c.connect()


def test_parse_url():
    p = transport.parse_url
    assert p("mqtt://h") == ("mqtt", "h", 1883, "")
    assert p("mqtts://h.example:8884") == ("mqtts", "h.example", 8884, "")
    assert p("ws://h") == ("ws", "h", 80, "/")
    assert p("wss://h/mqtt?x=1") == ("wss", "h", 443, "/mqtt?x=1")
    assert p("wss://[::1]:9001/m") == ("wss", "::1", 9001, "/m")
    for bad in ("http://h", "h:1883", "mqtt://", "mqtt://h:x", "mqtt://h:70000", "mqtt://u:p@h"):
        with raises(ValueError):
            p(bad)


async def test_lost_connection_restores_subscriptions_and_resends_qos1():
    c = client("mqtt", "lost", window=3)  # the three below fill it: on_connect waits for a
    # slot, which the resend (before on_connect) frees
    c.backoff_min_ms = 50
    hooks = []

    async def on_connect():
        hooks.append(c.is_connected)
        await c.publish(topic + "/hello", b"hi", qos=1)  # with a full window

    c.on_connect = on_connect
    topic = "lost/" + uid()
    await c.connect()
    await c.subscribe(topic, 1)
    # queue packets the broker will never see: write them into a closed connection
    c._s._s.close()
    pids = []
    for i in range(3):  # (no await inside comprehensions in MicroPython)
        pids.append(await c.publish(topic, b"m%d" % i, qos=1, wait=False))
    await asyncio.wait_for_ms(c.flush(), 5000)  # reconnects, resends with DUP, all acked
    await until(lambda: len(c.got) >= 3)
    assert sorted(p for _, p, _ in c.got) == [b"m0", b"m1", b"m2"]
    assert len(set(pids)) == 3
    assert hooks == [True, True] and not c._n
    ev = [e for e, _ in c.events]
    assert ev[:2] == ["connected", "disconnected"] and "connected" in ev[2:]
    await c.disconnect()


async def test_reconnect_and_set_url():
    c = client("mqtt", "redir")
    await c.connect()
    c.set_url(url("ws"))
    await c.reconnect()
    await until(lambda: c.is_connected)
    await c.publish("redir/" + uid(), b"x", qos=1)
    assert [e for e, _ in c.events] == ["connected", "disconnected", "connected"]
    await c.disconnect()


async def test_oversize_message_is_dropped_and_the_connection_stays():
    c = client("mqtt", "big", max_packet=1024)
    topic = "big/" + uid()
    await c.connect()
    await c.subscribe(topic, 1)
    p = client("mqtt", "pub")
    await p.connect()
    await p.publish(topic, bytes(2000), qos=1)  # over the 1024 the subscriber accepts
    await until(lambda: any(e == "error" for e, _ in c.events))
    d = [x for x in c.events if x[0] == "error"][0][1]
    assert isinstance(d, mqtt.Oversize) and "over max_packet 1024" in str(d) and topic in str(d), d
    await p.publish(topic, b"small", qos=1)
    await until(lambda: c.got)
    assert [m[1] for m in c.got] == [b"small"]  # the big one never reaches the app
    assert [e for e, _ in c.events] == ["connected", "error"]  # never disconnected
    await c.disconnect()
    await p.disconnect()


async def test_pipelined_window_and_on_ack():
    c = client("mqtts", "pipe", window=8)
    acked = [0, 0]  # count, sum of pids (no growing lists in a 96k heap)

    def on_ack(pid):
        acked[0] += 1
        acked[1] += pid

    c.on_ack = on_ack
    await c.connect()
    total = 0
    for i in range(300):
        total += await c.publish("pipe/x", b"x" * 50, qos=1, wait=False)
        assert c._n <= 8
    await c.flush()
    assert acked == [300, total] and not c._n
    await c.disconnect()


def hold(c, pid, pkt=b"x"):
    # a QoS 1 packet in flight, as publish() leaves it
    k = pid % c._window
    assert not c._ipid[k]
    c._ipid[k] = pid
    c._ipkt[k] = bytearray(pkt)
    c._n += 1


async def test_packet_ids_wrap_and_skip_ids_in_flight():
    c = mqtt.MQTTClient("mqtt://h", "x", window=4)  # pid p lives in slot p % 4
    for pid in (65535, 1, 6):
        hold(c, pid)
    c._pid = 65534
    assert c._new_pid(True) == 4  # wraps past 65535; 1, 2, 3 have no free slot
    c._pending[4] = None  # awaiting a SUBACK
    c._pid = 65534
    assert c._new_pid(True) == 8
    assert c._new_pid(False) == 9  # any id not in use (for SUBSCRIBE): slot 1 holds 1, not 9
    assert c._release(6) and not c._release(6) and c._n == 2
    c._pid = 65533
    assert c._new_pid(True) == 65534  # slot 2 is free again


async def serve_on_free_port(handler):
    # (the unix port has no getsockname: try random free ports)
    for _ in range(20):
        port = 20000 + int.from_bytes(os.urandom(2), "big") % 40000
        try:
            return port, await asyncio.start_server(handler, "127.0.0.1", port)
        except OSError:
            pass
    raise AssertionError("no free port")


async def test_dead_broker_is_detected_by_keepalive():
    # a server that accepts, answers CONNACK, then never says anything again
    async def serve(r, w):
        await r.readexactly(2)
        await r.read(256)
        w.write(b"\x20\x02\x00\x00")
        await w.drain()
        await asyncio.sleep(30)

    port, srv = await serve_on_free_port(serve)
    try:
        c = mqtt.MQTTClient("mqtt://127.0.0.1:%d" % port, "dead", keepalive=1)
        events = []
        c.on_status = lambda e, d: events.append((e, str(d)))
        c.backoff_min_ms = 60000
        await c.connect()
        await until(lambda: len(events) > 1, 3000)
        assert events[1][0] == "disconnected" and "keepalive" in events[1][1], events
        await c.disconnect()
    finally:
        srv.close()


async def test_silent_server_times_out_in_tls_handshake_and_connack():
    async def serve(r, w):
        await asyncio.sleep(30)  # accepts, then says nothing

    port, srv = await serve_on_free_port(serve)
    try:
        for scheme, why in (("mqtts", "no answer to the TLS handshake within 300 ms"),
                            ("mqtt", "no CONNACK within 300 ms")):
            c = mqtt.MQTTClient("%s://127.0.0.1:%d" % (scheme, port), "mute", insecure=True)
            c.connect_timeout_ms = 300
            try:
                await c.connect()
                raise AssertionError("connected to a silent server")
            except mqtt.MQTTError as e:
                assert str(e) == why, str(e)  # not an empty TimeoutError: the log says why
            assert not c.is_connected
    finally:
        srv.close()


async def test_long_drain_does_not_grow_memory():
    import gc

    c = client("mqtt", "steady")
    await c.connect()

    async def burst():
        for i in range(1500):
            await c.publish("steady/x", b"x" * 100, qos=1, wait=False)
        await c.flush()
        gc.collect()
        return gc.mem_free()

    await burst()  # the first burst sizes everything that is reused
    m1 = await burst()
    m2 = await burst()
    assert m2 >= m1 - 256, (m1, m2)
    await c.disconnect()


async def test_idle_connection_stays_up_on_keepalive():
    # PINGREQ/PINGRESP keep a quiet connection alive: nothing else arrives for 2.5 keepalives
    c = client("mqtts", "idle", keepalive=1)
    await c.connect()
    await asyncio.sleep_ms(2500)
    # the sentinel: this PUBACK. A close by the broker, noticed before or only by this
    # publish, is a "disconnected" before the PUBACK comes on a new connection
    await c.publish("idle/x", b"still here", qos=1)
    assert [e for e, _ in c.events] == ["connected"], c.events
    await c.disconnect()
