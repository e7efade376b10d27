# Weightron adapter against PLATFORMS.md: wss default, Application ID + current token,
# {"$timestamp": ISO, "$native": {...}} to a configurable topic.
import json

from mptest import raises
from platform_fakes import adapter, reading
from uplink import config
from uplink.platforms import Command

TS = 1767268800000


def wt(**kw):
    kw.setdefault("application_id", "app42")
    kw.setdefault("publish", True)
    if "credentials" not in kw:
        kw.setdefault("token", "ACCESS")
    return adapter("weightron", **kw)


async def test_connect_fields():
    a = wt(device_id="scale-7")
    assert a.url == "wss://mqtt.weightron.cloud:443/mqtt"
    assert await a.credentials() == ("app42", "ACCESS")
    # from the credential source (uplink.credentials): the username stays the Application ID
    a = wt(credentials={"source": "static", "username": "client-x", "password": "FRESH"})
    assert await a.credentials() == ("app42", "FRESH")
    with raises(config.ConfigError, "platform.application_id"):
        adapter("weightron", token="x")
    with raises(config.ConfigError, "platform.credentials"):
        adapter("weightron", application_id="app42")


def test_payload_and_default_topic():
    a = wt(device_id="scale-7")
    out = a.encode([reading({"weight": 12.5, "unit": "kg"}, TS + 250), reading({"weight": 13})])
    assert [(t, n) for t, _, n in out] == [("app42/devices/scale-7", 1), ("app42/devices/scale-7", 1)]
    assert json.loads(out[0][1]) == {"$timestamp": "2026-01-01T12:00:00.250Z",
                                     "$native": {"weight": 12.5, "unit": "kg"}}
    assert json.loads(out[1][1]) == {"$native": {"weight": 13}}
    # device_id defaults to the device name
    assert wt().encode([reading({"w": 1})])[0][0] == "app42/devices/greenhouse-1"


def test_topic_and_payload_template_configurable():
    a = wt(device_id="hub-1", topic="{application_id}/hubs/{device_id}/data", values_key="$raw",
           fields={"$type": "weigh"})
    t, p, n = a.encode([reading({"w": 2}, TS)])[0]
    assert t == "app42/hubs/hub-1/data"
    assert json.loads(p) == {"$timestamp": "2026-01-01T12:00:00Z", "$raw": {"w": 2}, "$type": "weigh"}
    # sub-device readings go to that device's topic
    assert a.encode([reading({"w": 3}, None, "scale-2")])[0][0] == "app42/hubs/scale-2/data"
    assert a.encode([reading({"w": 3}, None, "a/#")])[0][0] is None


def test_limit():
    out = wt(max_payload=256).encode([reading({"blob": "z" * 300}), reading({"w": 1})])
    assert out[0][0] is None and out[0][2] == 1
    assert out[1][0] == "app42/devices/greenhouse-1"


def test_commands_only_when_a_command_topic_is_configured():
    a = wt()
    assert a.subscriptions() == []
    assert a.handle("app42/devices/greenhouse-1", b'{"method":"reboot"}', False) is None
    a = wt(command_topic="app42/devices/greenhouse-1/commands")
    assert a.subscriptions() == [("app42/devices/greenhouse-1/commands", 1)]
    cmd = a.handle("app42/devices/greenhouse-1/commands", b'{"method":"tare","params":{"cell":1}}', False)
    assert cmd == Command("tare", {"cell": 1})
    with raises(ValueError, "no method"):
        a.handle("app42/devices/greenhouse-1/commands", b'{"params":{}}', False)
    with raises(ValueError, "not valid JSON"):
        a.handle("app42/devices/greenhouse-1/commands", b"tare", False)


async def test_a_refused_token_is_invalidated_at_its_source():
    a = wt(credentials={"source": "static", "username": "u", "password": "T1"})

    class Source:
        invalidated = 0

        async def __call__(self):
            return ("ignored", "T%d" % (self.invalidated + 1))

        def invalidate(self):
            self.invalidated += 1

    src = Source()
    a.creds = src
    assert await a.credentials() == ("app42", "T1")
    a.invalidate_credentials()
    assert src.invalidated == 1 and await a.credentials() == ("app42", "T2")
    wt().invalidate_credentials()  # no source: nothing to do


class _Relay:
    # what uplink.credentials.Credentials with source relay answers: (username, token)
    source = "relay"

    async def __call__(self):
        return ("app-from-relay", "TOKEN")


async def test_the_relay_username_is_the_application_id_when_none_is_configured():
    from platform_fakes import Ctx, make_cfg
    from uplink.platforms import weightron

    # with no relay and no application_id: refused at boot, naming the key
    with raises(config.ConfigError, "platform.application_id: missing"):
        weightron.Adapter(make_cfg("weightron", token="T"), Ctx())
    cfg = make_cfg("weightron", token="T", watch=["devices/#"], publish=True)
    from uplink import platforms

    orig = platforms.credential_source  # Base.__init__ asks it for the source
    platforms.credential_source = lambda p: _Relay()
    try:
        a = weightron.Adapter(cfg, Ctx())
    finally:
        platforms.credential_source = orig
    assert await a.credentials() == ("app-from-relay", "TOKEN")
    assert a.subscriptions() == [("app-from-relay/devices/#", 0)]
    assert a.encode([reading({"w": 1})])[0][0] == "app-from-relay/devices/greenhouse-1"


def test_watching_is_the_default_and_publishing_needs_publish_true():
    a = wt(publish=False, watch=["devices/bridge-1", "hubs/#"])
    assert not a.publishes
    assert a.subscriptions() == [("app42/devices/bridge-1", 0), ("app42/hubs/#", 0)]
    out = a.encode([reading({"w": 1}), reading({"w": 2})])
    assert out == [(None, b"platform.publish is off: this device only watches", 2)]
    cmd = a.handle("app42/devices/bridge-1", b'{"$timestamp":"2026-01-01T12:00:00Z","$native":{"w":7}}', False)
    assert cmd == Command("watch", {"topic": "devices/bridge-1",
                                    "value": {"$timestamp": "2026-01-01T12:00:00Z", "$native": {"w": 7}}})
    assert a.handle("other/devices/x", b"{}", False) is None
    assert a.handle("app42/devices/bridge-2", b"{}", False) is None  # not watched
    assert a.handle("app42/hubs/h1/x", b"[1]", False).params == {"topic": "hubs/h1/x", "value": [1]}
    with raises(ValueError, "not valid JSON"):
        a.handle("app42/hubs/h1", b"{", False)
    assert wt().publishes and not adapter("weightron", application_id="a", token="t").publishes


def test_refusals_name_the_permission():
    a = wt(watch=["devices/#"])
    assert a.explain("error", "broker refused the subscription to app42/devices/#") == (
        "Weightron refused the subscription to app42/devices/#: the Devices & Hubs read "
        "permission is off by default; ask your reseller")
    assert a.explain("disconnected", "connection lost") == "connection lost"  # nothing published
    a.encode([reading({"w": 1})])
    assert a.explain("disconnected", "connection lost") == (
        "Weightron refused the publish to app42/devices/greenhouse-1 (it closed the connection "
        "right after it: connection lost): the Devices write permission is off by default; ask "
        "your reseller")
