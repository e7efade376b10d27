# ThingsBoard adapter against PLATFORMS.md: topics, payload shapes, limits, downlinks,
# client-side RPC, provisioning, claiming, gateway mode.
import json

from mptest import raises
from platform_fakes import Client, Ctx, adapter, check_cover, forget, loaded, reading
from uplink import config
from uplink.platforms import Command

TS = 1767268800000


def tb(**kw):
    if "token" not in kw and "provision_key" not in kw:
        kw["token"] = "TOKEN123"
    return adapter("thingsboard", **kw)


async def test_token_is_the_username_and_no_password():
    a = tb()
    assert await a.credentials() == ("TOKEN123", None)
    assert a.url == "mqtts://mqtt.thingsboard.cloud:8883"
    assert a.client_id == "greenhouse-1"
    assert tb(url="mqtt://tb.local:1883", client_id="c-7").url == "mqtt://tb.local:1883"


def test_missing_token_is_a_config_error():
    with raises(config.ConfigError, "platform.token"):
        adapter("thingsboard")
    with raises(config.ConfigError, "platform.token"):
        adapter("thingsboard", provision_key="k")  # a key without its secret is not enough


def test_subscriptions():
    subs = [t for t, _ in tb().subscriptions()]
    assert subs == ["v1/devices/me/attributes", "v1/devices/me/attributes/response/+",
                    "v1/devices/me/rpc/request/+", "v1/devices/me/rpc/response/+"]
    gw = [t for t, _ in tb(gateway_devices=["A", "B"]).subscriptions()]
    for t in ("v1/gateway/rpc", "v1/gateway/attributes", "v1/gateway/attributes/response"):
        assert t in gw


def test_one_reading_with_ts_and_without():
    a = tb()
    out = a.encode([reading({"temperature": 21.5}, TS)])
    assert out == [("v1/devices/me/telemetry", b'{"ts":1767268800000,"values":{"temperature":21.5}}', 1)]
    out = a.encode([reading({"temperature": 25})])
    assert out == [("v1/devices/me/telemetry", b'{"temperature":25}', 1)]


def test_buffered_readings_are_one_array():
    a = tb()
    rs = [reading({"t": i}, TS + i * 1000) for i in range(5)] + [reading({"t": 9})]
    out = a.encode(rs)
    assert len(out) == 1
    topic, payload, n = out[0]
    assert topic == "v1/devices/me/telemetry" and n == 6
    doc = json.loads(payload)
    assert doc[0] == {"ts": TS, "values": {"t": 0}}
    assert doc[4]["ts"] == TS + 4000
    assert doc[5] == {"t": 9}


def test_payload_limit_splits_and_never_exceeds():
    a = tb(max_payload=300)
    rs = [reading({"temperature": 20 + i, "humidity": 50}, TS + i) for i in range(20)]
    out = a.encode(rs)
    check_cover(out, 20)
    assert len(out) > 1
    seen = []
    for topic, payload, n in out:
        assert len(topic) + len(payload) + 4 <= 300, len(payload)
        doc = json.loads(payload)
        doc = doc if isinstance(doc, list) else [doc]
        assert len(doc) == n
        seen += [d["ts"] for d in doc]
    assert seen == [TS + i for i in range(20)]  # order kept, nothing lost or repeated


def test_a_reading_too_big_alone_is_marked_for_dropping():
    a = tb(max_payload=256)
    out = a.encode([reading({"t": 1}), reading({"blob": "x" * 400}), reading({"t": 2})])
    assert out[0] == ("v1/devices/me/telemetry", b'{"t":1}', 1)
    assert out[1][0] is None and b"exceeds" in out[1][1] and out[1][2] == 1
    assert out[2] == ("v1/devices/me/telemetry", b'{"t":2}', 1)


async def test_on_connect_publishes_client_attributes_and_asks_limits_and_time():
    a = tb()
    c = Client()
    await a.on_connect(c)
    topics = [p[0] for p in c.published]
    assert topics[:2] == ["v1/devices/me/attributes", "v1/devices/me/telemetry"]
    # no client attribute "fw_version": that name is the OTA shared attribute announcing a package
    assert json.loads(c.published[0][1]) == {"board": "esp32-devkitc", "ip": "10.0.0.7"}
    # the running firmware as telemetry at every connect, as ThingsBoard's OTA guide has it
    # ("Update process": current_fw_title, current_fw_version; its firmware dashboard reads
    # them), with the title an OTA bundle for this board declares (host_tools/ota_bundle.py)
    assert json.loads(c.published[1][1]) == {"current_fw_title": "uplink-esp32-devkitc", "current_fw_version": "1.2.3"}
    # our own attributes handed back by a plain broker are no shared attributes
    assert a.handle("v1/devices/me/attributes", c.published[0][1], False) is None
    ctx = Ctx()
    ctx.fw = lambda: ("uplink-esp32-devkitc", "2.0.0")  # Context.fw: the active slot's manifest
    c = Client()
    await tb(ctx=ctx).on_connect(c)
    fw = json.loads(c.published[1][1])
    assert (fw["current_fw_title"], fw["current_fw_version"]) == ("uplink-esp32-devkitc", "2.0.0")
    reqs = {}
    for t, p, _ in c.published[2:]:
        assert t.startswith("v1/devices/me/rpc/request/")
        reqs[json.loads(p)["method"]] = t.rsplit("/", 1)[1]
    # getCurrentTime: the method of ThingsBoard's documented rule-chain example
    assert sorted(reqs) == ["getCurrentTime", "getSessionLimits"]
    # the answers come back on the matching ids
    rid = reqs["getSessionLimits"]
    limits = b'{"maxPayloadSize":1024,"maxInflightMessages":100,"rateLimits":{"messages":"200:1"}}'
    assert a.handle("v1/devices/me/rpc/response/" + rid, limits, False) is None
    assert a.max_payload == 1024
    # the example's script node answers new Date().getTime(): a bare number of ms
    rid = reqs["getCurrentTime"]
    cmd = a.handle("v1/devices/me/rpc/response/" + rid, b"1767268800123", False)
    assert cmd == Command("set_time", {"ms": 1767268800123})
    # an answer nobody asked for is ignored
    assert a.handle("v1/devices/me/rpc/response/999", b"1", False) is None


async def test_time_method_and_reply_key_are_configurable():
    a = tb(time_method="getTime", time_key="serverTime")
    c = Client()
    await a.on_connect(c)
    rid = [t for t, p, _ in c.published if b'"getTime"' in p][0].rsplit("/", 1)[1]
    cmd = a.handle("v1/devices/me/rpc/response/" + rid, b'{"serverTime":1767268800123}', False)
    assert cmd == Command("set_time", {"ms": 1767268800123})
    a = tb()
    c = Client()
    await a.on_connect(c)
    rid = [t for t, p, _ in c.published if b"getCurrentTime" in p][0].rsplit("/", 1)[1]
    with raises(ValueError, "time_key"):  # an object without time_key: say which key to set
        a.handle("v1/devices/me/rpc/response/" + rid, b'{"serverTime":1767268800123}', False)


def test_max_downlink_sets_the_clients_packet_limit():
    assert tb().max_packet == 4096
    assert tb(max_downlink=16384).max_packet == 16384
    with raises(config.ConfigError, "max_downlink"):
        tb(max_downlink=10)


async def test_session_limit_is_honoured_by_encode():
    a = tb()
    c = Client()
    await a.on_connect(c)
    rid = [t for t, p, _ in c.published if b"getSessionLimits" in p][0].rsplit("/", 1)[1]
    a.handle("v1/devices/me/rpc/response/" + rid, b'{"maxPayloadSize":400}', False)
    out = a.encode([reading({"v": i, "pad": "y" * 50}, TS + i) for i in range(20)])
    assert len(out) > 3
    for topic, payload, _ in out:
        assert len(topic) + len(payload) + 4 <= 400


async def test_session_limit_never_raises_the_configured_one():
    a = tb(max_payload=2048)
    c = Client()
    await a.on_connect(c)
    rid = [t for t, p, _ in c.published if b"getSessionLimits" in p][0].rsplit("/", 1)[1]
    a.handle("v1/devices/me/rpc/response/" + rid, b'{"maxPayloadSize":65536}', False)
    assert a.max_payload == 2048


async def test_bad_session_limits_answer_is_a_value_error():
    a = tb()
    c = Client()
    await a.on_connect(c)
    rid = [t for t, p, _ in c.published if b"getSessionLimits" in p][0].rsplit("/", 1)[1]
    with raises(ValueError, "maxPayloadSize"):
        a.handle("v1/devices/me/rpc/response/" + rid, b'{"maxPayloadSize":"big"}', False)
    assert a.max_payload == 65536


def test_server_rpc_becomes_a_command_and_reply_goes_to_the_same_id():
    a = tb()
    cmd = a.handle("v1/devices/me/rpc/request/42", b'{"method":"setInterval","params":{"interval_s":5}}', False)
    assert cmd.name == "set_interval" and cmd.params == {"interval_s": 5}
    assert a.reply(cmd, {"interval_s": 5}) == ("v1/devices/me/rpc/response/42", b'{"interval_s":5}')
    cmd = a.handle("v1/devices/me/rpc/request/7", b'{"method":"openValve","params":{"valve":2}}', False)
    assert cmd == Command("openValve", {"valve": 2}, ("me", 7))
    assert a.reply(cmd, None) == ("v1/devices/me/rpc/response/7", b"{}")


async def test_a_plain_broker_handing_back_our_own_requests_gives_no_commands():
    # mosquitto (uplink sim) delivers what the device publishes to its own subscriptions:
    # the client attributes on .../attributes, the client-side RPCs on .../rpc/request/+, and
    # later its replies to server RPCs on .../rpc/response/+. None of them is the cloud's.
    a = tb()
    c = Client()
    await a.on_connect(c)
    for t, p, _ in c.published:
        assert a.handle(t, p, False) is None, (t, p)
    # the cloud's own RPC that reuses a pending id (ThingsBoard counts server-side RPC ids in
    # a sequence of its own) is still a command; so is a later one with the other method
    rid = c.published[2][0].rsplit("/", 1)[1]
    cmd = a.handle("v1/devices/me/rpc/request/" + rid, b'{"method":"setLed","params":{"on":true}}', False)
    assert cmd == Command("setLed", {"on": True}, ("me", int(rid)))
    # its reply comes back on the id of our pending getSessionLimits: not an answer to that
    t, p = a.reply(cmd, {"led": True})
    assert t == "v1/devices/me/rpc/response/" + rid
    assert a.handle(t, p, False) is None
    # and the real answer, when it comes, still is
    limits = b'{"maxPayloadSize":1024}'
    assert a.handle(t, limits, False) is None and a.max_payload == 1024


async def test_on_thingsboard_a_server_rpc_on_a_pending_id_is_a_command_and_answers_still_count():
    # ThingsBoard never hands a device its request back: nothing is taken for an echo
    a = tb()
    c = Client()
    await a.on_connect(c)
    rid = c.published[2][0].rsplit("/", 1)[1]
    cmd = a.handle("v1/devices/me/rpc/request/" + rid, b'{"method":"ping"}', False)
    assert cmd is not None and cmd.name == "ping"
    a.reply(cmd, {"pong": True})
    assert a.handle("v1/devices/me/rpc/response/" + rid, b'{"maxPayloadSize":2048}', False) is None
    assert a.max_payload == 2048


def test_malformed_downlinks_raise_value_error_with_reason():
    a = tb()
    with raises(ValueError, "not valid JSON"):
        a.handle("v1/devices/me/rpc/request/1", b"{nope", False)
    with raises(ValueError, "no method"):
        a.handle("v1/devices/me/rpc/request/1", b'{"params":{}}', False)
    with raises(ValueError, "not a number"):
        a.handle("v1/devices/me/rpc/request/abc", b'{"method":"x"}', False)
    with raises(ValueError, "expected a JSON object"):
        a.handle("v1/devices/me/attributes", b"[1,2]", False)
    with raises(ValueError, "not valid JSON"):
        a.handle("v1/devices/me/attributes", b"\xff\xfe", False)
    with raises(ValueError, "interval"):
        a.handle("v1/devices/me/rpc/request/3", b'{"method":"setInterval","params":"x"}', False)
    with raises(ValueError, "no device"):
        tb(gateway_devices=["A"]).handle("v1/gateway/rpc", b'{"data":{"id":1,"method":"m"}}', False)
    assert a.handle("v2/fw/response/1/chunk/0", b"\x00", False) is None  # not ours: ignored


def test_shared_attributes_updates_and_responses():
    a = tb()
    assert a.handle("v1/devices/me/attributes", b'{"targetTemp":22}', False) == Command("attributes",
                                                                                       {"targetTemp": 22})
    assert a.handle("v1/devices/me/attributes", b'{"deleted":["x"]}', False).params == {"deleted": ["x"]}
    # shared keys only: as a shared update
    cmd = a.handle("v1/devices/me/attributes/response/3", b'{"shared":{"mode":"eco"}}', False)
    assert cmd == Command("attributes", {"mode": "eco"})
    # client keys were asked: the client section is kept, beside the shared one
    cmd = a.handle("v1/devices/me/attributes/response/3", b'{"client":{"a":1},"shared":{"mode":"eco"}}', False)
    assert cmd == Command("attributes", {"client": {"a": 1}, "shared": {"mode": "eco"}})
    cmd = a.handle("v1/devices/me/attributes/response/4", b'{"client":{"a":1}}', False)
    assert cmd == Command("attributes", {"client": {"a": 1}, "shared": {}})


async def test_attribute_request_on_connect_when_configured():
    a = tb(shared_attributes=["mode", "targetTemp"])
    c = Client()
    await a.on_connect(c)
    req = [(t, p) for t, p, _ in c.published if t.startswith("v1/devices/me/attributes/request/")]
    assert len(req) == 1 and json.loads(req[0][1]) == {"sharedKeys": "mode,targetTemp"}
    t, p = a.attributes_request(client=["fw_version"])
    assert t.startswith("v1/devices/me/attributes/request/") and json.loads(p) == {"clientKeys": "fw_version"}


async def test_claim_request_sent_once():
    a = tb(claim_secret="s3cret", claim_duration_ms=120000)
    c = Client()
    await a.on_connect(c)
    await a.on_connect(c)
    claims = [p for t, p, _ in c.published if t == "v1/devices/me/claim"]
    assert [json.loads(x) for x in claims] == [{"secretKey": "s3cret", "durationMs": 120000}]


async def test_provisioning_gets_and_stores_a_token():
    ctx = Ctx()
    a = adapter("thingsboard", ctx, provision_key="pk", provision_secret="ps")
    assert a.needs_provisioning()
    opened = []

    def server(topic, payload):
        if topic == "/provision/request":
            assert json.loads(payload) == {"deviceName": "greenhouse-1", "provisionDeviceKey": "pk",
                                           "provisionDeviceSecret": "ps"}
            return ("/provision/response",
                    b'{"status":"SUCCESS","credentialsType":"ACCESS_TOKEN","credentialsValue":"NEWTOKEN"}')

    def new_client(user=None, password=None):
        opened.append((user, password))
        return c

    c = Client(server)
    a.ctx.new_client = new_client  # (Context.new_client)
    await a.prepare(a.ctx)
    assert opened == [("provision", None)]
    assert ("/provision/response", 1) in c.subscribed or c.subscribed[0][0] == "/provision/response"
    assert c.disconnected
    assert ctx.saved[-1]["platform"]["token"] == "NEWTOKEN"
    assert await a.credentials() == ("NEWTOKEN", None)
    assert not a.needs_provisioning()
    a.ctx.new_client = new_client  # (Context.new_client)
    await a.prepare(a.ctx)  # has a token now: no second provisioning
    assert len(opened) == 1


async def test_provisioning_refusals_are_reported():
    for answer, why in ((b'{"status":"NOT_FOUND"}', "NOT_FOUND"),
                        (b'{"status":"FAILURE","errorMsg":"Device already exists"}', "already exists"),
                        (b'{"credentialsValue":"SECRET-TOKEN"', "not a JSON object")):
        ctx = Ctx()
        a = adapter("thingsboard", ctx, provision_key="pk", provision_secret="ps")
        c = Client(lambda t, p, answer=answer: ("/provision/response", answer))

        def new_client(c=c, **kw):
            return c

        with raises(config.ConfigError, why) as r:  # tb_provision.ProvisionError: safe mode with the reason
            a.ctx.new_client = new_client  # (Context.new_client)
            await a.prepare(a.ctx)
        assert "SECRET" not in str(r.value)
        assert ctx.saved == [] and c.disconnected


async def test_provisioning_timeout():
    a = adapter("thingsboard", provision_key="pk", provision_secret="ps")
    a.provision_timeout_s = 0.05
    c = Client()

    def new_client(**kw):
        return c

    with raises(OSError, "no answer"):
        a.ctx.new_client = new_client  # (Context.new_client)
        await a.prepare(a.ctx)


async def test_gateway_connects_sub_devices_and_keys_telemetry_by_device():
    a = tb(gateway_devices=["A", "B"])
    c = Client()
    await a.on_connect(c)
    connects = [json.loads(p) for t, p, _ in c.published if t == "v1/gateway/connect"]
    assert connects == [{"device": "A"}, {"device": "B"}]
    rs = [reading({"t": 1}, TS, "A"), reading({"t": 2}, TS + 1, "B"), reading({"t": 3}, TS + 2, "A"),
          reading({"heap": 5}, TS + 3), reading({"t": 4}, None, "B")]
    out = a.encode(rs)
    check_cover(out, 5)
    assert [(t, n) for t, _, n in out] == [("v1/gateway/telemetry", 3), ("v1/devices/me/telemetry", 1),
                                           ("v1/gateway/telemetry", 1)]
    doc = json.loads(out[0][1])
    assert doc == {"A": [{"ts": TS, "values": {"t": 1}}, {"ts": TS + 2, "values": {"t": 3}}],
                   "B": [{"ts": TS + 1, "values": {"t": 2}}]}
    assert json.loads(out[2][1]) == {"B": [{"t": 4}]}


def test_gateway_telemetry_respects_limit():
    a = tb(gateway_devices=["A", "B"], max_payload=300)
    rs = [reading({"t": i, "pad": "p" * 20}, TS + i, "AB"[i % 2]) for i in range(30)]
    out = a.encode(rs)
    check_cover(out, 30)
    got = []
    for topic, payload, n in out:
        assert len(topic) + len(payload) + 4 <= 300
        doc = json.loads(payload)
        assert sum(len(v) for v in doc.values()) == n
        for v in doc.values():
            got += [x["values"]["t"] for x in v]
    assert sorted(got) == list(range(30))


def test_gateway_rpc_and_reply():
    a = tb(gateway_devices=["A", "B"])
    cmd = a.handle("v1/gateway/rpc", b'{"device":"B","data":{"id":9,"method":"ping","params":{}}}', False)
    assert cmd.name == "ping" and cmd.device == "B"
    topic, payload = a.reply(cmd, {"pong": True})
    assert topic == "v1/gateway/rpc"
    assert json.loads(payload) == {"device": "B", "id": 9, "data": {"pong": True}}
    # that reply, handed back by a plain broker (the gateway subscribes to the same topic), is
    # no request: no command, no warning
    assert a.handle(topic, payload, False) is None
    cmd = a.handle("v1/gateway/attributes", b'{"device":"A","data":{"mode":"eco"}}', False)
    assert cmd == Command("attributes", {"mode": "eco"}, None, "A")


async def test_a_plain_device_does_not_load_the_gateway_part():
    # Bytecode lives in the heap: platforms/tb_gateway.py only for platform.gateway_devices
    forget("tb_gateway")
    a = tb()
    assert a.gateway is None and not loaded("tb_gateway")
    await a.on_connect(Client())
    a.encode([reading({"t": 1}, TS), reading({"t": 2}, TS + 1, "A")])
    assert a.handle("v1/gateway/rpc", b'{"device":"A","data":{"id":1,"method":"m"}}', False) is None
    assert not loaded("tb_gateway")
    # uplink.cloud's calls are the adapter's own requests (it sends them at every connect)
    assert a.cloud_api() is a
    g = tb(gateway_devices=["A", "B"])
    assert loaded("tb_gateway") and g.gateway.adapter is g
    assert g.subscriptions()[4:] == [("v1/gateway/rpc", 1), ("v1/gateway/attributes", 1),
                                     ("v1/gateway/attributes/response", 1)]


async def test_ota_is_asked_at_each_connect_and_the_running_package_is_no_announcement():
    ctx = Ctx()
    ctx.fw = lambda: ("uplink-esp32-devkitc", "2.0.0")  # Context.fw: the active slot's manifest
    ctx.ota_watch = True  # the main cloud (Context.ota_watch); a second cloud's context has none
    a = tb(ctx=ctx)
    assert ("v2/fw/response/+/chunk/+", 0) in a.subscriptions()
    assert "v2/fw/response/+/chunk/+" not in [t for t, _ in tb().subscriptions()]
    for _ in range(2):  # every connect asks, not the first one only
        c = Client()
        await a.on_connect(c)
        asks = [(t, json.loads(p)) for t, p, _ in c.published if t.startswith("v1/devices/me/attributes/request/")]
        keys = "fw_title,fw_version,fw_size,fw_checksum,fw_checksum_algorithm,fw_url"  # fw_url: external packages
        assert [q for _, q in asks] == [{"sharedKeys": keys}]
    answer = "v1/devices/me/attributes/response/" + asks[0][0].rsplit("/", 1)[1]
    fw = {"fw_title": "uplink-esp32-devkitc", "fw_version": "2.1.0", "fw_size": 10, "fw_checksum": "ab"}
    assert a.handle(answer, json.dumps({"shared": fw}).encode(), False) == Command("ota", fw)
    # ThingsBoard keeps the last package's fw_* attributes: the one running loads no updater
    running = dict(fw, fw_version="2.0.0")
    assert a.handle(answer, json.dumps({"shared": running}).encode(), False) is None
    assert a.handle(answer, b'{"shared":{}}', False) is None  # no package assigned: nothing for user.py
    # a push with the running package and a user attribute: only the user's part goes on
    push = dict(running, setpoint=21)
    assert a.handle("v1/devices/me/attributes", json.dumps(push).encode(), False) == Command("attributes",
                                                                                           {"setpoint": 21})
    assert a.handle("v1/devices/me/attributes", json.dumps(fw).encode(), False).name == "ota"


async def test_a_connections_first_reading_waits_for_its_session_limits():
    # ThingsBoard's limits (maxPayloadSize, maxInflightMessages) are known before the backlog
    # flows: the publisher awaits ready() once per connection (uplink.publisher._ready)
    import asyncio

    a = tb()
    c = Client()
    await a.on_connect(c)
    waiting = asyncio.create_task(a.ready(c))
    await asyncio.sleep_ms(200)
    assert not waiting.done()  # no answer yet: no reading goes out
    rid = [t for t, p, _ in c.published if b"getSessionLimits" in p][0].rsplit("/", 1)[1]
    limits = b'{"maxPayloadSize":2048,"maxInflightMessages":3}'
    assert a.handle("v1/devices/me/rpc/response/" + rid, limits, False) is None
    await asyncio.sleep_ms(20)
    assert waiting.done() and await waiting == 3 and a.max_payload == 2048
    assert await a.ready(c) == 3  # the same connection: at once


async def test_a_server_that_never_answers_the_limits_is_waited_for_once():
    import asyncio

    from uplink.platforms import thingsboard

    saved = thingsboard.LIMITS_WAIT_MS
    thingsboard.LIMITS_WAIT_MS = 300
    try:
        a = tb()
        c = Client()
        await a.on_connect(c)
        t0 = asyncio.ticks()
        assert await a.ready(c) is None  # the documented defaults: the client's window
        assert asyncio.ticks_diff(asyncio.ticks(), t0) >= 300
        c.connections += 1
        await a.on_connect(c)
        t0 = asyncio.ticks()
        await a.ready(c)
        assert asyncio.ticks_diff(asyncio.ticks(), t0) < 100  # not waited for again this boot
    finally:
        thingsboard.LIMITS_WAIT_MS = saved


async def test_an_x509_device_needs_no_token_and_sends_no_username():
    # thingsboard.io/docs/user-guide/certificates/: the certificate is the login
    a = adapter("thingsboard", client_cert="client.der", client_key="client_key.der")
    assert await a.credentials() == (None, None)
    assert not a.needs_provisioning()
    with raises(config.ConfigError, "platform.client_key"):
        adapter("thingsboard", client_cert="client.der")


async def test_gateway_requests_for_a_sub_device_have_the_documented_shapes():
    # thingsboard.io/docs/reference/gateway-mqtt-api/
    a = tb(gateway_devices=["A", "B"])
    gw = a.gateway
    assert gw.claim_request("A", "s3", 30000) == ("v1/gateway/claim", b'{"A":{"secretKey":"s3","durationMs":30000}}')
    t, p = gw.attributes_request("A", ["serial"], True)
    assert t == "v1/gateway/attributes/request"
    req = json.loads(p)
    assert req["device"] == "A" and req["client"] is True and req["keys"] == ["serial"] and isinstance(req["id"], int)
    assert gw.presence("B", False) == ("v1/gateway/disconnect", b'{"device":"B"}')
    c = Client()
    await gw.on_connect(c)
    assert [json.loads(p)["device"] for _, p, _ in c.published] == ["A"]  # B is gone until it comes back
    assert gw.presence("B", True) == ("v1/gateway/connect", b'{"device":"B"}')
    # an attribute record for a sub-device right after its reading: not part of the telemetry
    out = a.encode([reading({"level": 1}, TS) | {"device": "A"}, {"k": "a", "device": "A", "values": {"m": 1}}])
    assert out[0] == ("v1/gateway/telemetry", b'{"A":[{"ts":1767268800000,"values":{"level":1}}]}', 1)
    assert out[1] == ("v1/gateway/attributes", b'{"A":{"m":1}}', 1)
    # the answer to a request of uplink.cloud's goes to its waiter, not to user.py
    a.waiter = lambda rid, payload: rid == req["id"]
    assert gw.handle("v1/gateway/attributes/response", json.dumps({"id": req["id"], "device": "A",
                                                                   "value": "S-1"}).encode()) is None
