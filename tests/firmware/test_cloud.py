# uplink.cloud, user.py's API for each cloud's own features, with the real ThingsBoard and
# Blynk adapters: questions matched to answers through the fixed table, timeouts, records
# through the outbox and the adapters' encode(), on_change and its sync after a connect.
import asyncio
import json

from mptest import raises
from platform_fakes import Client, adapter, forget, loaded, reading
from uplink import cloud


class Outbox:
    def __init__(self):
        self.records = []

    def put(self, data):
        self.records.append(json.loads(data))


class Publisher:
    def notify(self):
        pass


class LiveClient(Client):
    is_connected = True


class App:
    sessions = None  # (uplink.sessions: the device's other clouds)

    def __init__(self, kind, answer=None, **keys):
        if kind == "thingsboard":
            keys.setdefault("token", "TOKEN123")
        elif kind == "weightron":
            keys.setdefault("application_id", "app42")
            keys.setdefault("token", "ACCESS")
        else:
            keys.setdefault("token", "DEVTOKEN")
        self.adapter = adapter(kind, **keys)
        self.cfg = self.adapter.cfg
        self.client = LiveClient(answer)
        self.outbox = Outbox()
        self.publisher = Publisher()
        self.handled = []
        self.client.on_message = self.on_message

    def on_message(self, topic, payload, retained):  # as App.on_message does
        cmd = self.adapter.handle(topic, payload, retained)
        if cmd is not None and not cloud.take(cmd):
            self.handled.append(cmd)


def fresh(kind, answer=None, **keys):
    cloud._cb = None
    cloud._keys = None
    cloud._changes = {}
    app = App(kind, answer, **keys)
    cloud.attach(app)
    return app


def tb_server(topic, payload):
    # the rule chain / attribute service answering on the request's id
    rid = topic[topic.rfind("/") + 1:]
    req = json.loads(payload)
    if topic.startswith("v1/devices/me/rpc/request/") and req["method"] == "getWeather":
        return ("v1/devices/me/rpc/response/" + rid, json.dumps({"temp": 4, "city": req["params"]["city"]}).encode())
    if topic.startswith("v1/devices/me/attributes/request/"):
        return ("v1/devices/me/attributes/response/" + rid,
                json.dumps({"client": {"fw": "x"}, "shared": {"setpoint": 21}}).encode())
    return None


async def test_rpc_gets_its_answer_by_request_id():
    app = fresh("thingsboard", tb_server)
    ans = await cloud.rpc("getWeather", {"city": "Oslo"}, timeout_s=2)
    assert ans == {"temp": 4, "city": "Oslo"}
    topic, payload, qos = app.client.published[0]
    assert topic.startswith("v1/devices/me/rpc/request/") and qos == 0
    assert json.loads(payload) == {"method": "getWeather", "params": {"city": "Oslo"}}
    assert app.handled == []  # the answer went to the caller, not to handle()
    assert cloud._key == [None] * cloud.SLOTS


async def test_rpc_without_answer_times_out_and_frees_its_slot():
    app = fresh("thingsboard")
    for _ in range(cloud.SLOTS + 1):  # more than the table: each slot comes back
        with raises(cloud.Timeout, "RPC getNothing: no answer within 0.05 s"):
            await cloud.rpc("getNothing", timeout_s=0.05)
    assert len(app.client.published) == cloud.SLOTS + 1


async def test_a_full_table_refuses_another_question():
    fresh("thingsboard")
    tasks = [asyncio.create_task(cloud.rpc("slow", timeout_s=0.3)) for _ in range(cloud.SLOTS)]
    await asyncio.sleep_ms(20)
    with raises(cloud.CloudError, "questions wait"):
        await cloud.rpc("one-more", timeout_s=0.3)
    for t in tasks:
        with raises(cloud.Timeout):
            await t


async def test_question_waits_for_the_link_then_times_out():
    app = fresh("thingsboard")
    app.client.is_connected = False
    with raises(cloud.Timeout, "not connected"):
        await cloud.rpc("getWeather", timeout_s=0.1)
    assert app.client.published == []


async def test_attribute_request_returns_client_and_shared():
    app = fresh("thingsboard", tb_server)
    got = await cloud.get_attributes(client=["fw"], shared=["setpoint"], timeout_s=2)
    assert got == {"client": {"fw": "x"}, "shared": {"setpoint": 21}}
    assert json.loads(app.client.published[0][1]) == {"clientKeys": "fw", "sharedKeys": "setpoint"}
    with raises(ValueError):
        await cloud.get_attributes()


async def test_claim_sends_the_documented_request():
    app = fresh("thingsboard")
    await cloud.claim("s3cret", 30000)
    assert app.client.published == [("v1/devices/me/claim", b'{"secretKey":"s3cret","durationMs":30000}', 1)]


async def test_client_attributes_go_through_the_outbox_and_encode_as_attributes():
    app = fresh("thingsboard")
    await cloud.set_attributes({"heating": True})
    rec = app.outbox.records[0]
    assert rec["k"] == "a" and rec["values"] == {"heating": True}
    out = app.adapter.encode([reading({"t": 1}, 1767268800000), rec, reading({"t": 2}, 1767268801000)])
    assert [(t, n) for t, _, n in out] == [("v1/devices/me/telemetry", 1), ("v1/devices/me/attributes", 1),
                                          ("v1/devices/me/telemetry", 1)]
    assert json.loads(out[1][1]) == {"heating": True}
    # a Blynk record on ThingsBoard is dropped (counted), never sent as telemetry
    assert app.adapter.encode([{"k": "e", "code": "x", "text": ""}])[0][0] is None


async def test_blynk_has_no_rpc_and_thingsboard_no_events():
    fresh("blynk")
    with raises(cloud.NotSupported, "Blynk has no client-side RPC"):
        await cloud.rpc("x")
    fresh("thingsboard")
    with raises(cloud.NotSupported, "ThingsBoard has no log events"):
        await cloud.event("door_open")
    with raises(cloud.NotSupported, "ThingsBoard has no metadata reads"):
        await cloud.meta("Serial")


class Sessions:  # uplink.sessions as uplink.cloud reads it: the other clouds' sessions
    def __init__(self, *extra):
        self.extra = list(extra)


async def test_each_feature_goes_to_the_first_session_on_its_cloud():
    # Blynk main, ThingsBoard second: the RPC is the second's, and asking it loads nothing of
    # Blynk's (its cloud API part stays unloaded until a Blynk feature is used)
    forget("blynk_cloud")
    cloud._cb = None
    main = App("blynk")
    second = App("thingsboard", tb_server)
    main.sessions = Sessions(second)
    cloud.attach(main)
    assert await cloud.rpc("getWeather", {"city": "Oslo"}, timeout_s=2) == {"temp": 4, "city": "Oslo"}
    assert main.client.published == [] and len(second.client.published) == 1
    assert not loaded("blynk_cloud")
    await cloud.event("door_open")
    assert main.outbox.records == [{"k": "e", "to": "blynk", "code": "door_open", "text": ""}]
    assert loaded("blynk_cloud")


async def test_blynk_event_goes_through_the_outbox_to_event_code():
    app = fresh("blynk")
    await cloud.event("door_open", "front door")
    rec = app.outbox.records[0]
    ts = 1767268800000
    out = app.adapter.encode([reading({"T": 1}, ts), rec, reading({"T": 2}, ts + 1000), reading({"T": 3}, ts + 2000)])
    assert ("event/door_open", b"front door", 1) in out
    assert sum(n for _, _, n in out) == 4
    long = app.adapter.encode([{"k": "e", "code": "x", "text": "\u00e9" * 1000}])[0]
    assert len(long[0]) + len(long[1]) <= 1024 and long[1].decode()  # cut whole characters
    with raises(ValueError):
        await cloud.event("a/b")


async def test_blynk_property_now_or_not_at_all():
    app = fresh("blynk")
    assert await cloud.prop("Switch", "color", "#23C48E") is True
    assert app.client.published == [("ds/Switch/prop/color", b"#23C48E", 0)]
    app.client.is_connected = False
    assert await cloud.prop("Switch", "label", "Pump") is False


async def test_blynk_meta_read_is_answered_on_downlink_meta():
    def server(topic, payload):
        if topic == "get/meta":
            return ("downlink/meta/" + payload.decode(), b"SN-0042")
        return None

    app = fresh("blynk", server)
    assert await cloud.meta("Serial Number", timeout_s=2) == "SN-0042"
    assert app.client.published == [("get/meta", b"Serial Number", 0)]
    with raises(cloud.Timeout, "metadata Other"):
        fresh("blynk")
        await cloud.meta("Other", timeout_s=0.05)


async def test_on_change_gets_updates_merged_and_a_sync_after_connect():
    app = fresh("thingsboard", shared_attributes=["setpoint"])
    seen = []

    async def changed(values):
        seen.append(values)

    cloud.on_change(changed, keys=["setpoint", "mode"])
    await cloud.connected(app.adapter, app.client)
    # only what platform.shared_attributes did not ask already
    assert json.loads(app.client.published[-1][1]) == {"sharedKeys": "mode"}
    app.on_message("v1/devices/me/attributes", b'{"setpoint":22}', False)
    app.on_message("v1/devices/me/attributes", b'{"setpoint":23,"mode":"eco"}', False)
    await asyncio.sleep_ms(10)
    assert seen == [{"setpoint": 23, "mode": "eco"}] and app.handled == []
    # a server-side RPC is still handle()'s
    app.on_message("v1/devices/me/rpc/request/5", b'{"method":"setLed","params":{}}', False)
    assert [c.name for c in app.handled] == ["setLed"]


async def test_blynk_on_change_asks_get_ds_all_and_takes_writes():
    app = fresh("blynk")
    seen = []
    cloud.on_change(seen.append)
    await cloud.connected(app.adapter, app.client)
    assert app.client.published == [("get/ds/all", b"", 0)]
    app.on_message("downlink/ds/Switch", b"1", False)
    await asyncio.sleep_ms(10)
    assert seen == [{"Switch": 1}]
    app = fresh("blynk", sync=["Switch"])
    cloud.on_change(seen.append)
    await cloud.connected(app.adapter, app.client)
    assert app.client.published == []  # platform.sync asked on connect already


async def test_a_failing_callback_does_not_stop_later_changes():
    app = fresh("blynk")
    seen = []

    def changed(values):
        seen.append(values)
        raise RuntimeError("user bug")

    cloud.on_change(changed)
    app.on_message("downlink/ds/A", b"1", False)
    await asyncio.sleep_ms(10)
    app.on_message("downlink/ds/B", b"2", False)
    await asyncio.sleep_ms(10)
    assert seen == [{"A": 1}, {"B": 2}]


async def test_weightron_watched_values_reach_on_change():
    app = fresh("weightron", watch=["devices/bridge-1"])
    seen = []
    cloud.on_change(seen.append)
    await cloud.connected(app.adapter, app.client)
    assert app.client.published == []  # watched values come as messages: nothing to ask
    app.on_message("app42/devices/bridge-1", b'{"$native":{"w":7}}', False)
    await asyncio.sleep_ms(10)
    assert seen == [{"devices/bridge-1": {"$native": {"w": 7}}}]
    with raises(cloud.NotSupported, "Weightron has no client-side RPC"):
        await cloud.rpc("x")
