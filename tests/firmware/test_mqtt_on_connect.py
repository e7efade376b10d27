# What on_connect publishes goes out once per connection: the resend after a connect is for
# packets of earlier connections, not for the ones the hook just wrote.
from test_mqtt_broker import client, uid, until

NEEDS = ("broker",)


async def test_on_connect_publish_is_sent_once_per_connect():
    topic = "t/oc/" + uid()
    c = client("mqtt", "oc")

    async def hello():
        await c.publish(topic, b"hello", qos=1, wait=False)

    c.on_connect = hello
    await c.subscribe(topic, 1)  # recorded now, subscribed at connect, before the hook runs
    await c.connect()
    await until(lambda: c.got)
    # the sentinel: published once connect() returned and "hello" came back, so after all the
    # connect and its hook wrote; mosquitto delivers a connection's messages in their order
    await c.publish(topic, b"mark 1", qos=1)
    await until(lambda: b"mark 1" in [p for _, p, _ in c.got])
    assert [p for _, p, _ in c.got] == [b"hello", b"mark 1"], c.got
    await c.reconnect()  # a second connection: the hook runs again, once
    await until(lambda: len(c.got) >= 3)
    await c.publish(topic, b"mark 2", qos=1)  # (written after the hook's, as above)
    await until(lambda: b"mark 2" in [p for _, p, _ in c.got])
    await c.disconnect()
    assert [p for _, p, _ in c.got] == [b"hello", b"mark 1", b"hello", b"mark 2"], c.got


async def test_unacknowledged_packets_are_resent_before_on_connect_publishes():
    # what waited for a PUBACK is older than anything on_connect sends: it goes first
    topic = "t/order/" + uid()
    c = client("mqtt", "order", window=3)
    c.backoff_min_ms = 50

    async def hello():
        if c.events.count(("connected", None)) > 1:
            await c.publish(topic, b"hello", qos=1, wait=False)

    c.on_connect = hello
    await c.subscribe(topic, 1)
    await c.connect()
    c._s._s.close()  # the broker never sees what is published next
    for i in range(3):  # a full window: on_connect's publish has to wait for a slot
        await c.publish(topic, b"m%d" % i, qos=1, wait=False)
    await until(lambda: len(c.got) >= 4)
    await c.disconnect()
    assert [p for _, p, _ in c.got] == [b"m0", b"m1", b"m2", b"hello"], c.got
