# Blynk adapter against PLATFORMS.md: CONNECT fields, info/mcu, ds/batch_ds/timestamped_batch,
# the 1024-byte message limit, downlinks (redirect in all four schemes, reboot, ping, ds
# writes), gateway mode with dev/<token>/ prefixes.
import json

from mptest import raises
from platform_fakes import Client, adapter, check_cover, forget, loaded, reading
from uplink import config
from uplink.platforms import Command

TS = 1767268800000
GW = {"A": "tokA", "B": "tokB"}


def bl(**kw):
    kw.setdefault("token", "DEVTOKEN")
    kw.setdefault("template_id", "TMPL123")
    return adapter("blynk", **kw)


def within_limit(out):
    for topic, payload, n in out:
        if topic is not None:
            assert len(topic) + len(payload) + 4 <= 1024, (topic, len(payload))


async def test_connect_fields():
    a = bl()
    assert await a.credentials() == ("device", "DEVTOKEN")
    assert a.url == "mqtts://blynk.cloud:8883"
    assert a.clean is True
    assert len(bl(client_id="x" * 100).client_id) == 64
    g = bl(gateway_tokens=GW, token="GWTOKEN")
    assert await g.credentials() == ("mgmt_device", "GWTOKEN")
    with raises(config.ConfigError, "platform.token"):
        adapter("blynk")
    with raises(config.ConfigError, "gateway_tokens.A"):
        bl(gateway_tokens={"A": "to/k"})


async def test_subscribe_downlink_and_info_mcu_after_connect():
    a = bl()
    assert a.subscriptions() == [("downlink/#", 1)]
    c = Client()
    await a.on_connect(c)
    assert [p[0] for p in c.published] == ["info/mcu", "get/utc/all/json"]
    info = json.loads(c.published[0][1])
    assert info["tmpl"] == "TMPL123" and info["type"] == "TMPL123"
    assert info["ver"] == "1.2.3" and info["rxbuff"] == 1024
    # "build" is the build date, never the version
    assert isinstance(info["build"], str) and info["build"] and info["build"] != info["ver"]


async def test_sync_asks_for_current_datastream_values():
    c = Client()
    await bl(sync=["Setpoint", "Mode"]).on_connect(c)
    assert [(t, p) for t, p, _ in c.published][1:] == [("get/ds", b"Setpoint,Mode"), ("get/utc/all/json", b"")]


async def test_the_clock_asks_blynk_for_the_time_after_every_connect():
    # docs.blynk.io .../device-mqtt-api/topic-structure: downlink/utc/all/json is the answer to
    # get/utc/all/json: without the request there is no cloud time to fall back on
    a = bl()
    c = Client()
    await a.on_connect(c)
    assert ("get/utc/all/json", b"", 0) in c.published
    cmd = a.handle("downlink/utc/all/json", b'{"time":1767268800123,"tz_name":"Europe/Kyiv"}', False)
    assert cmd == Command("set_time", {"ms": 1767268800123})
    assert a.handle("downlink/utc/all/json", b'{"tz_name":"Europe/Kyiv"}', False) is None


def test_single_value_goes_to_ds_as_plain_text():
    a = bl()
    assert a.encode([reading({"Temperature": 21.3})]) == [("ds/Temperature", b"21.3", 1)]
    # Boolean datastreams take true/false (docs.blynk.io .../device-mqtt-api/datastreams)
    assert a.encode([reading({"Power": True})]) == [("ds/Power", b"true", 1)]
    assert a.encode([reading({"Power": False})]) == [("ds/Power", b"false", 1)]
    assert a.encode([reading({"Label": "open"}, TS)]) == [("ds/Label", b"open", 1)]


def test_a_multi_value_goes_to_ds_with_its_items_0x00_separated():
    # datastreams page: "For multivalue (array-like) values, the individual items in the
    # payload are separated using a 0x00 byte"; batch_ds keeps the JSON array (Location)
    a = bl()
    assert a.encode([reading({"Location": [30.5, -50.25]})]) == [("ds/Location", b"30.5\x00-50.25", 1)]
    assert a.encode([reading({"Labels": ["First", "Second", "Third"]})]) == [
        ("ds/Labels", b"First\x00Second\x00Third", 1)]
    out = a.encode([reading({"Location": [30.5, 50.5], "T": 1})])
    assert json.loads(out[0][1]) == {"Location": [30.5, 50.5], "T": 1}
    # a multi-value write arrives the same way, and its new state goes back the same way
    cmd = a.handle("downlink/ds/Location", b"30.5\x0050.25", False)
    assert cmd.params["value"] == [30.5, 50.25] and cmd.params["raw"] == "30.5\x0050.25"
    assert a.reply(cmd, [30.5, 50.25]) == ("ds/Location", b"30.5\x0050.25")
    assert a.handle("downlink/ds/Names", b"a\x00b\x00", False).params["value"] == ["a", "b", ""]


def test_several_values_go_to_batch_ds():
    out = bl().encode([reading({"Temperature": 23.1, "Power": True, "Mode": "eco"})])
    assert len(out) == 1 and out[0][0] == "batch_ds" and out[0][2] == 1
    assert json.loads(out[0][1]) == {"Temperature": 23.1, "Power": True, "Mode": "eco"}
    assert b'"Power":true' in out[0][1]


def test_buffered_readings_with_time_use_timestamped_batch():
    rs = [reading({"Temperature": 20 + i, "Humidity": 40}, TS + i * 1000) for i in range(3)]
    out = bl().encode(rs)
    check_cover(out, 3)
    by_topic = {t: json.loads(p) for t, p, _ in out}
    assert by_topic["ds/Temperature/timestamped_batch"] == [[TS, 20], [TS + 1000, 21], [TS + 2000, 22]]
    assert by_topic["ds/Humidity/timestamped_batch"] == [[TS, 40], [TS + 1000, 40], [TS + 2000, 40]]
    assert [n for _, _, n in out] == [0, 3]  # delivered when the last part is acknowledged
    # off by config: each reading on its own
    out = bl(timestamped=False).encode(rs)
    assert [t for t, _, _ in out] == ["batch_ds"] * 3


def test_1024_limit_splits_batch_ds_and_timestamped_batch():
    a = bl()
    values = {}
    for i in range(60):
        values["Datastream%02d" % i] = 1000.5 + i
    out = a.encode([reading(values)])
    within_limit(out)
    check_cover(out, 1)
    assert len(out) > 1 and [n for _, _, n in out][-1] == 1
    merged = {}
    for t, p, _ in out:
        assert t == "batch_ds"
        merged.update(json.loads(p))
    assert merged == values
    del out, merged, values
    rs = [reading({"Temperature": 20.125 + i}, TS + i) for i in range(60)]
    out = a.encode(rs)
    within_limit(out)
    check_cover(out, 60)
    assert len(out) == 2
    pts = []
    for t, p, _ in out:
        assert t == "ds/Temperature/timestamped_batch"
        pts += json.loads(p)
    assert [x[0] for x in pts] == [TS + i for i in range(60)]


def test_value_too_big_for_a_message_is_never_sent():
    out = bl().encode([reading({"Note": "x" * 1100}), reading({"T": 1})])
    assert out[0][0] is None and out[0][2] == 1
    assert out[1] == ("ds/T", b"1", 1)
    out = bl().encode([reading({"Note": "x" * 1100, "T": 2})])
    assert len(out) == 1 and out[0][0] is None


def test_datastream_names_never_become_wildcards():
    out = bl().encode([reading({"a/b": 1})])
    assert out == [("batch_ds", b'{"a/b":1}', 1)]
    out = bl().encode([reading({"x+": 1}, TS), reading({"x+": 2}, TS + 1)])
    assert [t for t, _, _ in out] == ["batch_ds", "batch_ds"]


def test_redirect_in_all_four_schemes():
    for url in ("mqtts://ny3.blynk.cloud:8883", "mqtt://fra1.blynk.cloud:1883",
                "wss://fra1.blynk.cloud:443/mqtt", "ws://lon1.blynk.cloud:80/mqtt"):
        a = bl()
        assert a.handle("downlink/redirect", url.encode(), False) == Command("redirect", {"url": url})
        assert a.url == url
    a = bl()
    for bad in (b"http://x", b"", b"mqtts://", b"ny3.blynk.cloud", b":8883", b"ny3.blynk.cloud:mqtt",
                b"ny3.blynk.cloud:8883/mqtt", b"\xff"):
        with raises(ValueError, "redirect"):
            a.handle("downlink/redirect", bad, False)
    assert a.url == "mqtts://blynk.cloud:8883"


def test_redirect_to_host_and_port_keeps_our_scheme_and_path():
    # the authentication page's form: "host:port format (i.e. ny3.blynk.cloud:8883)"
    a = bl()
    cmd = a.handle("downlink/redirect", b"ny3.blynk.cloud:8883", False)
    assert cmd == Command("redirect", {"url": "mqtts://ny3.blynk.cloud:8883"}) and a.url == "mqtts://ny3.blynk.cloud:8883"
    a = bl(url="wss://blynk.cloud:443/mqtt")
    assert a.handle("downlink/redirect", b" fra1.blynk.cloud:9443\n", False).params["url"] == "wss://fra1.blynk.cloud:9443/mqtt"
    a = bl(url="mqtt://blynk.cloud:1883")
    a.handle("downlink/redirect", b"lon1.blynk.cloud:1883", False)
    assert a.url == "mqtt://lon1.blynk.cloud:1883"
    assert not loaded("blynk_redirect")  # rare: loaded for the redirect only (a transient)


def test_reboot_ping_and_datastream_writes():
    a = bl()
    assert a.handle("downlink/reboot", b"", False) == Command("reboot")
    assert a.handle("downlink/ping", b"", False) == Command("ping")
    cmd = a.handle("downlink/ds/Setpoint", b"22.5", False)
    assert cmd.name == "write" and cmd.params == {"name": "Setpoint", "value": 22.5, "raw": "22.5"}
    assert a.handle("downlink/ds/Switch", b"1", False).params["value"] == 1
    sw = a.handle("downlink/ds/Switch", b"true", False)
    assert sw.params["value"] is True
    assert a.reply(sw, False) == ("ds/Switch", b"false")
    assert a.handle("downlink/ds/Label", b"hello", False).params["value"] == "hello"
    # the write is confirmed by sending the new state back to the datastream
    assert a.reply(cmd, 22.5) == ("ds/Setpoint", b"22.5")
    assert a.reply(cmd, None) is None
    assert a.reply(Command("reboot"), {"rebooting": True}) is None
    assert a.handle("downlink/ota/json", b'{"url":"https://x/fw.bin","size":1,"ver":"2"}', False).name == "ota"
    # the version running (Ctx.version) is no update: nothing to load the updater for
    assert a.handle("downlink/ota/json", b'{"url":"https://x/fw.bin","size":1,"ver":"1.2.3"}', False) is None
    assert a.handle("downlink/ota/json", b'{"url":"https://x/fw.bin","size":1}', False).name == "ota"
    assert a.handle("downlink/diag", b"", False) is None
    with raises(ValueError, "datastream"):
        a.handle("downlink/ds/", b"1", False)
    with raises(ValueError, "not valid JSON"):
        a.handle("downlink/ota/json", b"{", False)


INFO = {"A": {"template_id": "TMPLpump", "version": "2.4.1", "build": "2026-03-01"},
        "B": {"template_id": "TMPLvalve", "version": "0.9"}}


async def test_gateway_mode_addresses_every_sub_device_through_dev_token():
    # Gateway API: every sub-device is dev/<its token>/...; the gateway itself never is: "The
    # {deviceToken} in the topic must be the authentication token of the specific device you
    # intend to manage or update, not the token used for your Gateway API connection"
    # (docs.blynk.io/en/blynk.cloud-mqtt-api/mqtt-gateway-api)
    a = bl(gateway_tokens=GW, token="GWTOKEN", gateway_info=INFO)
    assert a.own_prefix is None
    subs = sorted(t for t, _ in a.subscriptions())
    assert subs == ["dev/tokA/downlink/#", "dev/tokB/downlink/#"]
    c = Client()
    await a.on_connect(c)
    assert sorted(p[0] for p in c.published) == ["dev/tokA/get/utc/all/json", "dev/tokA/info/mcu", "dev/tokB/info/mcu"]
    assert "GWTOKEN" not in repr(c.published)
    out = a.encode([reading({"T": 1}, None, "A"), reading({"T": 2, "H": 3}, None, "B")])
    assert [(t, n) for t, _, n in out] == [("dev/tokA/ds/T", 1), ("dev/tokB/batch_ds", 1)]
    # the gateway's own readings cannot go anywhere: said once, then dropped quietly
    out = a.encode([reading({"heap": 9}), reading({"heap": 8})])
    assert [(t, n) for t, _, n in out] == [(None, 1), (None, 1)]
    assert b"no device of its own" in out[0][1] and out[1][1] == b""
    out = a.encode([reading({"T": 1}, TS, "A"), reading({"T": 2}, TS + 1, "A"), reading({"T": 3}, TS + 2, "B")])
    assert [(t, n) for t, _, n in out] == [("dev/tokA/ds/T/timestamped_batch", 2), ("dev/tokB/ds/T", 1)]
    out = a.encode([reading({"T": 1}, None, "Z")])
    assert out[0][0] is None and b"'Z'" in out[0][1]
    cmd = a.handle("dev/tokB/downlink/ds/Valve", b"1", False)
    assert cmd.device == "B" and cmd.params["value"] == 1
    assert a.reply(cmd, 1) == ("dev/tokB/ds/Valve", b"1")
    assert a.handle("dev/tokA/downlink/reboot", b"", False) == Command("reboot", None, None, "A")
    for tok in ("tokZ", "GWTOKEN"):
        with raises(ValueError, "unknown sub-device"):
            a.handle("dev/%s/downlink/reboot" % tok, b"", False)
    with raises(ValueError, "redirect"):
        a.handle("dev/tokA/downlink/redirect", b"mqtt://x:1", False)


async def test_each_sub_device_reports_its_own_template_type_and_version():
    # authentication page: "ver - actual software/firmware version of the device", "type - the
    # type of firmware upgrade packages that the device accepts"; the gateway's would be wrong
    c = Client()
    await bl(gateway_tokens=GW, token="GWTOKEN", gateway_info=INFO).on_connect(c)
    info = {t: json.loads(p) for t, p, _ in c.published if t.endswith("/info/mcu")}
    assert info == {
        "dev/tokA/info/mcu": {"tmpl": "TMPLpump", "type": "TMPLpump", "ver": "2.4.1", "build": "2026-03-01",
                              "rxbuff": 1024},
        "dev/tokB/info/mcu": {"tmpl": "TMPLvalve", "type": "TMPLvalve", "ver": "0.9", "rxbuff": 1024}}
    # a sub-device whose own is not known is not announced rather than given the gateway's
    c = Client()
    await bl(gateway_tokens=GW, token="GWTOKEN", gateway_info={"B": INFO["B"]}, sync=["Mode"]).on_connect(c)
    assert [t for t, _, _ in c.published] == ["dev/tokB/info/mcu", "dev/tokA/get/utc/all/json"]
    with raises(config.ConfigError, "gateway_info.C"):
        bl(gateway_tokens=GW, token="GWTOKEN", gateway_info={"C": INFO["B"]})
    with raises(config.ConfigError, "gateway_info.A: expected {template_id, version}"):
        bl(gateway_tokens=GW, token="GWTOKEN", gateway_info={"A": {"template_id": "TMPLpump"}})
    with raises(config.ConfigError, "gateway_tokens.A"):
        bl(gateway_tokens=GW, token="tokA")


async def test_gateway_login_with_oauth_client_credentials():
    # The Gateway API's first login option: MQTT username = the OAuth Client ID, password =
    # the Client Secret; no token of its own (docs.blynk.io .../mqtt-gateway-api)
    a = adapter("blynk", template_id="TMPL123", oauth_client_id="oc-123", oauth_client_secret="s3cret",
                gateway_tokens=GW)
    assert await a.credentials() == ("oc-123", "s3cret")
    assert a.client_id == "greenhouse-1"  # the MQTT client id stays the device's own
    assert sorted(t for t, _ in a.subscriptions()) == ["dev/tokA/downlink/#", "dev/tokB/downlink/#"]
    c = Client()
    await a.on_connect(c)
    # (no device of its own: the time is asked through a sub-device)
    assert sorted(p[0] for p in c.published) == ["dev/tokA/get/utc/all/json"]
    # the session has no device of its own: a reading without a sub-device cannot go anywhere
    out = a.encode([reading({"T": 1}), reading({"T": 2}, None, "A")])
    assert out[0][0] is None and b"no device of its own" in out[0][1] and out[0][2] == 1
    assert out[1] == ("dev/tokA/ds/T", b"2", 1)
    with raises(config.ConfigError, "oauth_client_secret"):
        adapter("blynk", oauth_client_id="oc-123", gateway_tokens=GW)
    with raises(config.ConfigError, "platform.gateway_tokens"):
        adapter("blynk", oauth_client_id="oc-123", oauth_client_secret="s")


async def test_a_plain_device_loads_neither_the_gateway_nor_the_cloud_api_code():
    # Bytecode lives in the heap: the gateway part (platforms/blynk_gateway.py) is loaded only
    # for gateway_tokens or an OAuth client, the cloud API part (blynk_cloud.py) only when
    # uplink.cloud asks for it, so a plain device on two clouds fits its heap.
    forget("blynk_gateway")
    forget("blynk_cloud")
    a = bl(sync=["Mode"])
    assert a.gateway is None and await a.credentials() == ("device", "DEVTOKEN")
    assert a.own_prefix == "" and a.subscriptions() == [("downlink/#", 1)]
    await a.on_connect(Client())
    a.encode([reading({"T": 1}), reading({"T": 2, "H": 3}), reading({"T": 3}, TS), reading({"T": 4}, TS + 1)])
    assert a.handle("downlink/ds/Mode", b"2", False).params["value"] == 2
    assert a.handle("dev/tokA/downlink/reboot", b"", False) is None  # not subscribed: not ours
    assert not loaded("blynk_gateway") and not loaded("blynk_cloud")
    # uplink.cloud's calls are there when asked for: one part, made once
    api = a.cloud_api()
    assert api is a.cloud_api() and api.adapter is a
    assert api.event_message("door", "open") == ("event/door", b"open")
    assert api.sync_request(None) is None and api.meta_request("Serial") == ("get/meta", b"Serial")
    assert loaded("blynk_cloud") and not loaded("blynk_gateway")
    # a gateway loads its part, and works through it
    g = bl(gateway_tokens=GW, token="GWTOKEN")
    assert loaded("blynk_gateway") and g.gateway.adapter is g
    assert g.own_prefix is None and await g.credentials() == ("mgmt_device", "GWTOKEN")
    assert g.encode([reading({"T": 1}, None, "B")]) == [("dev/tokB/ds/T", b"1", 1)]
    assert g.handle("dev/tokA/downlink/ping", b"", False) == Command("ping", None, None, "A")
    with raises(ValueError, "no device of its own"):
        g.cloud_api().event_message("door", "")


async def test_the_oauth_session_has_no_own_prefix_for_the_cloud_api():
    a = adapter("blynk", oauth_client_id="oc-123", oauth_client_secret="s3cret", gateway_tokens=GW)
    assert a.own_prefix is None  # (uplink.ota_blynk reports the device's own progress there)
    with raises(ValueError, "OAuth"):
        a.cloud_api().event_message("door", "")
    assert a.cloud_api().sync_request(["Mode"]) is None
    out = a.encode([{"k": "e", "code": "door", "text": ""}])
    assert out[0][0] is None and b"OAuth" in out[0][1]


DAY = 86400 * 1000


def test_readings_older_than_a_month_are_not_sent_and_are_counted():
    # datastreams page: timestamped_batch points "no older than 1 month"
    now = TS + 40 * DAY
    a = bl()
    a.ctx.now = now
    old = [reading({"T": i}, TS + i * 1000) for i in range(3)]
    fresh = [reading({"T": 10 + i}, now - DAY + i) for i in range(2)]
    out = a.encode(old + fresh)
    check_cover(out, 5)
    assert out[0][0] is None and out[0][2] == 3 and b"older than the month Blynk takes" in out[0][1]
    assert [(t, n) for t, _, n in out[1:]] == [("ds/T/timestamped_batch", 2)]
    assert a.too_old == 3
    # said once: later drops carry no reason of their own (the publisher logs none)
    out = a.encode([reading({"T": 1, "H": 2}, TS), reading({"T": 2}, now - 29 * DAY)])
    assert out[0] == (None, b"", 1) and out[1] == ("ds/T", b"2", 1) and a.too_old == 4
    # a backlog keeps its order: the old ones between fresh ones are cut out, the rest batched
    out = a.encode([fresh[0], old[0], fresh[1]])
    assert [(t, n) for t, _, n in out] == [("ds/T", 1), (None, 1), ("ds/T", 1)]
    # no clock, or readings sent with their arrival time (timestamped = false): nothing to judge
    a.ctx.now = None
    assert [t for t, _, _ in a.encode(old)] == ["ds/T/timestamped_batch"]
    b = bl(timestamped=False)
    b.ctx.now = now
    assert [t for t, _, _ in b.encode(old)] == ["ds/T"] * 3 and b.too_old == 0


async def test_a_month_old_backlog_is_said_once_on_the_console_and_counted_in_health():
    import asyncio

    from outbox_util import tmpdir
    from uplink import log, publisher
    from uplink.outbox import Outbox
    from uplink.sessions import _health

    class Acking(Client):
        is_connected = True
        window = 4
        on_ack = None

        async def publish(self, topic, payload, qos=0, retain=False, wait=True):
            pid = await Client.publish(self, topic, payload, qos)
            self.on_ack(pid)
            return pid

    now = TS + 60 * DAY
    ob = Outbox(tmpdir("blynk-old"), 1 << 20)
    for i in range(50):  # 45 from a month and a half ago, then 5 of today
        ob.put(json.dumps(reading({"T": i}, (TS if i < 45 else now - DAY) + i * 1000)).encode())
    a = bl()
    a.ctx.now = now
    c = Acking()
    pub = publisher.Publisher(ob, a, c, batch=8)
    c.on_ack = pub.on_ack
    lines = []
    log.print = lines.append
    try:
        task = asyncio.create_task(pub.run())
        for _ in range(300):
            if not ob.depth:
                break
            await asyncio.sleep_ms(10)
        task.cancel()
    finally:
        del log.print
    assert ob.depth == 0
    said = [line for line in lines if "dropped" in line]
    assert len(said) == 1 and "older than the month Blynk takes" in said[0], said
    assert a.too_old == 45 and _health(c, pub, 0)["too_old"] == 45
    sent = [json.loads(p) for t, p, _ in c.published]
    assert [x[1] for m in sent for x in m] == list(range(45, 50))
