# uplink.platforms: loading one cloud only, the lazy schema map, Command, ISO timestamps.
import json
import sys

from mptest import raises
from platform_fakes import make_cfg
from uplink import config, platforms


def test_load_imports_only_the_selected_platform():
    for k in platforms.KINDS:
        sys.modules.pop("uplink.platforms." + k, None)
    m = platforms.load("blynk")
    assert m.DEFAULT_URL == "mqtts://blynk.cloud:8883"
    loaded = [k for k in platforms.KINDS if "uplink.platforms." + k in sys.modules]
    assert loaded == ["blynk"], loaded


def test_load_unknown_kind_names_the_known_ones():
    with raises(ValueError, "thingsboard, blynk, weightron, biotz"):
        platforms.load("aws")


def test_schemas_map_is_lazy_and_checks_kind_keys():
    for k in platforms.KINDS:
        sys.modules.pop("uplink.platforms." + k, None)
    cfg = make_cfg("biotz", device_id="d", customer_id="c", password="p")
    assert cfg["platform"]["message_type"] == "telemetry"
    assert "uplink.platforms.thingsboard" not in sys.modules
    with raises(config.ConfigError, "platform.tokn"):
        make_cfg("thingsboard", tokn="x")
    doc = {"device": {"name": "x"}, "platform": {"kind": "aws"}}
    with raises(config.ConfigError, "expected one of biotz, blynk, thingsboard, weightron"):
        config.parse(json.dumps(doc), platforms.SCHEMAS)


def test_iso_formats_utc_with_optional_millis():
    assert platforms.iso(0) == "1970-01-01T00:00:00Z"
    assert platforms.iso(1767268800000) == "2026-01-01T12:00:00Z"
    assert platforms.iso(1767268800007) == "2026-01-01T12:00:00.007Z"
    assert platforms.iso(951782400000) == "2000-02-29T00:00:00Z"
    assert platforms.iso(4102444799999) == "2099-12-31T23:59:59.999Z"
    assert platforms.iso(1709251199000) == "2024-02-29T23:59:59Z"


def test_command_normalises_well_known_names():
    c = platforms.command("setInterval", 10, ("me", 1))
    assert c == platforms.Command("set_interval", {"interval_s": 10}, ("me", 1))
    assert platforms.command("set_interval", {"interval_s": "15"}).params == {"interval_s": 15}
    assert platforms.command("Reboot", None).name == "reboot"
    assert platforms.command("getStatus", None).name == "status"
    assert platforms.command("openValve", {"valve": 2}).params == {"valve": 2}
    assert platforms.command("openValve", [1, 2]).params == {"value": [1, 2]}
    with raises(ValueError, "positive interval"):
        platforms.command("setInterval", {"interval_s": -1})
    with raises(ValueError, "positive interval"):
        platforms.command("setInterval", "soon")


def test_topic_levels_refuse_wildcards():
    assert platforms.topic_ok("Temperature")
    for bad in ("", "a/b", "a+", "#"):
        assert not platforms.topic_ok(bad)


def _reading_keys(kind, health, **keys):
    from platform_fakes import adapter as make_adapter
    from uplink import app, board

    tel = {"interval_ms": 0, "interval_s": 60, "health": health}
    a = app.App({"telemetry": tel}, board.load("host"))
    a.user = type("U", (), {"read": lambda self: {"T": 1}})()
    a.adapter = make_adapter(kind, **keys)
    return set(a.telemetry.take_reading()["values"])


def test_health_keys_only_where_the_platform_has_room_unless_configured():
    # Blynk takes only template datastreams and Biotz only schema fields: a health key
    # there is refused or lost. ThingsBoard stores any telemetry key.
    doc = {"device": {"name": "x"}, "platform": {"kind": "blynk"}}
    assert config.parse(json.dumps(doc), platforms.SCHEMAS)["telemetry"]["health"] is None
    assert _reading_keys("blynk", None, token="t") == {"T"}
    tb = _reading_keys("thingsboard", None, token="t")
    assert "T" in tb and "uptime_s" in tb and "gc_free" in tb
    assert "fw_version" in tb  # the running bundle's version (uplink.ota.running)
    assert "uptime_s" in _reading_keys("blynk", True, token="t")  # configured: sent
    assert _reading_keys("thingsboard", False, token="t") == {"T"}
