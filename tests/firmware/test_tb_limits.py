# ThingsBoard's rate limits on the device (uplink.platforms.tb_limits): what getSessionLimits
# says becomes the pace of every publish, counted as ThingsBoard counts
# (common/transport DefaultTransportService: a telemetry/attribute message costs one
# telemetryMessages token and one telemetryDataPoints token per key-value; others one messages token).
import asyncio
import json

from mptest import raises
from platform_fakes import Client, adapter

TS = 1767268800000


def tb(**kw):
    kw.setdefault("token", "TOKEN123")
    return adapter("thingsboard", **kw)


class Server:
    """ThingsBoard's side: one greedily refilled bucket per window (TbRateLimits), full at
    first; consume() False where the transport would close the connection."""

    def __init__(self, spec):
        self.w = []
        for part in spec.split(","):
            n, s = (int(x) for x in part.split(":"))
            self.w.append([n, n / (s * 1000), n])
        self.t = asyncio.ticks()

    def consume(self, k):
        now = asyncio.ticks()
        dt = asyncio.ticks_diff(now, self.t)
        self.t = now
        for w in self.w:
            w[2] = min(w[0], w[2] + dt * w[1])
        if any(w[2] < k for w in self.w):
            return False
        for w in self.w:
            w[2] -= k
        return True


async def answer_limits(a, c, limits):
    await a.on_connect(c)
    rid = [t for t, p, _ in c.published if b"getSessionLimits" in p][-1].rsplit("/", 1)[1]
    a.handle("v1/devices/me/rpc/response/" + rid, json.dumps(limits).encode(), False)


async def test_the_session_limits_pace_the_client_and_bound_what_is_in_flight():
    a = tb()
    c = Client()
    await answer_limits(a, c, {"maxPayloadSize": 65536, "maxInflightMessages": 100, "rateLimits": {
        "messages": "200:1,6000:60", "telemetryMessages": "100:1,3000:60",
        "telemetryDataPoints": "200:1,6000:60,14000:3600"}})
    # in flight at most a fifth of the smallest message window: what a resend after a
    # reconnect sends unpaced stays within the margin the device keeps
    assert await a.ready(c) == 20
    assert c.pace is a.limits and c.pace is not None
    # the same limits again (the next connection) keep the buckets: ThingsBoard's are per device
    lim = a.limits
    c.connections += 1
    await answer_limits(a, c, {"maxPayloadSize": 65536, "rateLimits": {
        "messages": "200:1,6000:60", "telemetryMessages": "100:1,3000:60",
        "telemetryDataPoints": "200:1,6000:60,14000:3600"}})
    assert a.limits is lim
    # an answer without rate limits: no pacing
    c.connections += 1
    await answer_limits(a, c, {"maxPayloadSize": 65536, "maxInflightMessages": 7})
    assert a.limits is None and await a.ready(c) == 7 and c.pace is None


def test_data_points_are_counted_as_thingsboard_counts_them_or_more():
    from uplink.platforms.tb_limits import Limits

    lim = Limits({"telemetryDataPoints": "100:1"})
    a = tb()
    r = [{"ts": TS + i, "values": {"t": 1.5, "h": 40, "label": "a\":b", "n": {"x": 1}}} for i in range(3)]
    (topic, payload, n), = a.encode(r)
    # ThingsBoard: 4 key-values per reading (a nested object is one JSON value); we may count
    # more (the '":' inside the string, the nested key), never fewer
    assert 12 <= lim._cost(topic, payload) <= 18
    assert lim._cost("v1/devices/me/telemetry", b'{"a":1,"b":2}') == 2
    assert lim._cost("v1/devices/me/attributes", b'{"board":"esp32","ip":"10.0.0.2"}') == 2
    assert lim._cost("v1/devices/me/rpc/request/3", b'{"method":"getCurrentTime","params":{}}') == 0


def test_a_bad_limit_names_itself():
    from uplink.platforms.tb_limits import Limits

    with raises(ValueError, "rateLimits.telemetryDataPoints"):
        Limits({"telemetryDataPoints": "lots"})
    with raises(ValueError, "rateLimits.messages"):
        Limits({"messages": 200})


async def test_a_burst_keeps_every_window_of_every_limit():
    # 60 telemetry messages of 3 data points and 30 other messages, as fast as the caller
    # can: each goes when the limits allow, none would be refused by ThingsBoard's buckets
    from uplink.platforms.tb_limits import Limits

    spec = {"messages": "10:1,40:60", "telemetryMessages": "20:1", "telemetryDataPoints": "30:1,200:60"}
    lim = Limits(spec)
    srv = {k: Server(v) for k, v in spec.items()}
    refused = []

    async def send(i, topic, payload):
        await lim.wait(topic, payload)
        if topic.endswith("telemetry"):
            ok = srv["telemetryMessages"].consume(1) and srv["telemetryDataPoints"].consume(3)
        else:
            ok = srv["messages"].consume(1)
        if not ok:
            refused.append(i)

    tasks = [asyncio.create_task(send(i, "v1/devices/me/telemetry", b'{"a":1,"b":2,"c":3}')) for i in range(60)]
    tasks += [asyncio.create_task(send(i, "v1/devices/me/rpc/request/%d" % i, b'{"method":"m"}')) for i in range(30)]
    for t in tasks:
        await t
    assert refused == []
    assert lim.waited > 0  # it did have to wait: the burst was over the limits


async def test_health_keys_take_at_most_a_quarter_of_the_tightest_data_point_window():
    from time import ticks_add, ticks_ms

    a = tb()
    c = Client()
    assert a.health_due() and a.health_due()  # no limits: every reading has its health keys
    await answer_limits(a, c, {"maxPayloadSize": 65536, "rateLimits": {
        "messages": "200:1,6000:60", "telemetryDataPoints": "200:1,6000:60,14000:3600"}})
    # ~12 keys in a quarter of 14000 an hour: one reading with health every 12.3 s at most
    assert 12000 <= a.limits.health_every_ms() <= 12500
    assert a.health_due()
    assert not a.health_due()  # the next reading goes without them
    a.limits._health_at = ticks_add(ticks_ms(), -a.limits.health_every_ms())
    assert a.health_due()


def test_a_resent_packet_takes_its_tokens_and_a_gateway_keeps_both_sets():
    from uplink.mqtt import publish_packet
    from uplink.platforms import tb_limits

    lim = tb_limits.Limits({"telemetryMessages": "10:1", "telemetryDataPoints": "100:1"}, {"messages": "5:1"})
    assert len(lim.sets) == 2  # the gateway's own and its devices': both apply to every message
    pkt = publish_packet("v1/devices/me/telemetry", b'[{"ts":1,"values":{"a":1,"b":2}},{"ts":2,"values":{"c":3}}]',
                         1, False, 7)
    before = lim.sets[0][2].w[0][2]
    lim.resent(pkt)  # what the client writes again after a reconnect
    assert before - lim.sets[0][2].w[0][2] == 3  # its three data points
    assert lim.sets[0][1].w[0][2] == 7  # and one telemetry message (of 8, 80% of 10)
    a = tb()
    tb_limits.update(a, {"rateLimits": {"messages": "10:1"}, "gatewayRateLimits": {"messages": "50:1"}})
    assert len(a.limits.sets) == 2 and a.limits.inflight() == 2
