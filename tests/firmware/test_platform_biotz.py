# Biotz adapter against PLATFORMS.md: device id + password, the publish/data topic, flat
# objects with RFC 3339 UTC timestamps, actions, the retained firmware/update message.
import json
import os

from mptest import raises
from platform_fakes import adapter, check_cover, reading
from uplink import config
from uplink.platforms import Command

TS = 1767268800000
BASE = "biotz/1/0/cust9/dev5/"
FW = b'{"name":"fw-2.0","download-url":"https://fw.example/2.0.bin","size":1024,"md5":"x","sha1":"y","sha256":"z"}'


def bz(**kw):
    kw.setdefault("device_id", "dev5")
    kw.setdefault("customer_id", "cust9")
    kw.setdefault("password", "PW")
    return adapter("biotz", **kw)


def fw_file(name):
    path = "/tmp/uplink-test-%s-%d" % (name, os.getpid() if hasattr(os, "getpid") else 0)
    try:
        os.remove(path)
    except OSError:
        pass
    return path


async def test_connect_fields():
    a = bz()
    assert a.url == "mqtts://broker.biotz.io:8883"
    assert await a.credentials() == ("dev5", "PW")
    assert a.client_id == "dev5"
    with raises(config.ConfigError, "platform.customer_id"):
        adapter("biotz", device_id="d", password="p")
    with raises(config.ConfigError, "platform.password"):
        adapter("biotz", device_id="d", customer_id="c")


def test_no_cloud_api_part():
    assert bz().cloud_api() is None  # uplink.cloud has nothing Biotz-specific


def test_topics():
    a = bz(message_type="climate")
    assert a.topic == BASE + "publish/data/climate"
    assert a.subscriptions() == [(BASE + "subscribe/action/+", 1), (BASE + "subscribe/firmware/update", 1)]
    a = bz(action_types=["reboot", "setpoint"])
    assert [t for t, _ in a.subscriptions()][:2] == [BASE + "subscribe/action/reboot",
                                                     BASE + "subscribe/action/setpoint"]


def test_flat_objects_with_utc_timestamp_and_arrays():
    a = bz()
    out = a.encode([reading({"temperature": 12.5}, TS)])
    assert [(t, n) for t, _, n in out] == [(BASE + "publish/data/telemetry", 1)]
    assert json.loads(out[0][1]) == {"timestamp": "2026-01-01T12:00:00Z", "temperature": 12.5}
    out = a.encode([reading({"t": 1}, TS), reading({"t": 2}, TS + 1500), reading({"t": 3})])
    assert len(out) == 1 and out[0][2] == 3
    assert json.loads(out[0][1]) == [{"timestamp": "2026-01-01T12:00:00Z", "t": 1},
                                     {"timestamp": "2026-01-01T12:00:01.500Z", "t": 2}, {"t": 3}]


def test_limit_splits_and_marks_the_unsendable():
    a = bz(max_payload=300)
    rs = [reading({"t": i, "pad": "q" * 30}, TS + i) for i in range(20)]
    out = a.encode(rs)
    check_cover(out, 20)
    assert len(out) > 1
    for t, p, n in out:
        assert len(t) + len(p) + 4 <= 300
    out = a.encode([reading({"t": 1}), reading({"blob": "b" * 400}), reading({"t": 2})])
    assert [(t is None, n) for t, _, n in out] == [(False, 1), (True, 1), (False, 1)]


def test_actions_become_commands():
    a = bz()
    assert a.handle(BASE + "subscribe/action/reboot", b"{}", False) == Command("reboot")
    assert a.handle(BASE + "subscribe/action/reboot", b"", False) == Command("reboot")
    assert a.handle(BASE + "subscribe/action/setpoint", b'{"value":21}', False) == Command("setpoint", {"value": 21})
    assert a.handle(BASE + "subscribe/action/set_interval", b'{"interval_s":60}', False).params == {"interval_s": 60}
    with raises(ValueError, "not valid JSON"):
        a.handle(BASE + "subscribe/action/setpoint", b"21,", False)
    with raises(ValueError, "action type"):
        a.handle(BASE + "subscribe/action/", b"{}", False)
    assert a.handle("biotz/1/0/other/dev/subscribe/action/reboot", b"{}", False) is None
    assert a.reply(Command("reboot"), {"rebooting": True}) is None


def test_retained_firmware_update_reported_once_per_distinct_message():
    a = bz()
    a.firmware_file = fw_file("fw")
    topic = BASE + "subscribe/firmware/update"
    cmd = a.handle(topic, FW, True)
    assert cmd.name == "firmware" and cmd.params["download-url"] == "https://fw.example/2.0.bin"
    assert a.handle(topic, FW, True) is None  # the same message again (every reconnect)
    b = bz()  # after a reboot: remembered on flash
    b.firmware_file = a.firmware_file
    assert b.handle(topic, FW, True) is None
    newer = FW.replace(b"2.0", b"2.1")
    assert b.handle(topic, newer, True).params["name"] == "fw-2.1"
    assert b.handle(topic, newer, True) is None
    assert b.handle(topic, b"", True) is None  # retained message cleared
    with raises(ValueError, "download-url"):
        b.handle(topic, b'{"name":"x"}', True)
    assert b.handle(topic, b'{"name":"x"}', True) is None  # reported once, even when malformed
    os.remove(a.firmware_file)


RELAY = {"source": "relay", "url": "https://10.0.0.1:8443", "ca": "relay_ca.der",
         "device_id": "dev5", "key": "00" * 32}


async def test_mqtt_never_logs_in_with_the_relays_id_token():
    # Biotz MQTT = Device ID + device password; the relay's id_token is for HTTP ingestion
    with raises(config.ConfigError, "platform.credentials: Biotz MQTT logs in with the Device ID"):
        bz(password=None, credentials=RELAY)
    with raises(config.ConfigError, "platform.credentials: Biotz MQTT logs in with the Device ID"):
        bz(credentials=RELAY)
    a = bz()
    assert await a.credentials() == ("dev5", "PW") and a.make_client(None) is None


def test_transport_http_posts_to_ingestion_with_the_relay():
    a = bz(password=None, transport="http", credentials=RELAY)
    assert a.url == "https://ingestion-http.biotz.io" and a.subscriptions() == []
    s = a.make_client(None)
    assert s.http.url == "https://ingestion-http.biotz.io/api/device/publish/data/telemetry"
    assert s.http.credentials is a.creds and not s.is_connected
    a = bz(password=None, transport="http", credentials=RELAY, message_type="m1",
           ingest_url="https://ingest.example")
    assert a.make_client(None).http.url == "https://ingest.example/api/device/publish/data/m1"
    # the publisher's messages are what ingestion takes: flat objects, RFC 3339 UTC
    t, p, n = a.encode([reading({"t": 1}, TS), reading({"t": 2})])[0]
    assert n == 2 and json.loads(p) == [{"timestamp": "2026-01-01T12:00:00Z", "t": 1}, {"t": 2}]
    with raises(config.ConfigError, "transport http posts with an id_token from the token relay"):
        bz(transport="http")
    with raises(config.ConfigError, "platform.transport"):
        bz(transport="coap")
