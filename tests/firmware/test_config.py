import json

from mptest import raises
from uplink import config

GOOD = {
    "device": {"name": "greenhouse-1", "board": "esp32-devkitc"},
    "wifi": {"networks": [{"ssid": "home", "password": "pw"}, {"ssid": "shop"}]},
    "platform": {"kind": "thingsboard", "url": "mqtts://tb.example:8883", "ca": "ca.der"},
}
EXTRA = {"thingsboard": {"token": (str, None)}, "blynk": {"token": (str, config.REQUIRED)}}


def doc(**changes):
    d = json.loads(json.dumps(GOOD))
    for path, value in changes.items():
        node = d
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[k]
        if value is None:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return json.dumps(d)


def test_defaults_filled_in():
    c = config.parse(doc(), EXTRA)
    assert c["telemetry"]["interval_s"] == 30
    assert c["outbox"]["max_bytes"] == 32768
    assert c["wifi"]["networks"][1] == {"ssid": "shop", "password": ""}
    assert c["platform"]["insecure"] is False
    assert c["platform"]["token"] is None
    assert c["ntp"]["servers"]


def test_typo_names_key_path_and_suggests():
    with raises(config.ConfigError) as r:
        config.parse(doc(platform__tokn="abc"), EXTRA)
    assert "platform.tokn" in str(r.value)
    assert "did you mean 'token'" in str(r.value)


def test_wrong_type_names_expected():
    with raises(config.ConfigError) as r:
        config.parse(doc(telemetry={"interval_s": "10"}), EXTRA)
    assert "telemetry.interval_s" in str(r.value) and "whole number" in str(r.value)


def test_bool_is_not_a_number():
    with raises(config.ConfigError, "telemetry.interval_s"):
        config.parse(doc(telemetry={"interval_s": True}), EXTRA)


def test_list_item_path():
    with raises(config.ConfigError) as r:
        config.parse(doc(wifi={"networks": [{"ssid": "a"}, {"password": "x"}]}), EXTRA)
    assert "wifi.networks[1].ssid: missing" in str(r.value)


def test_missing_required_section():
    with raises(config.ConfigError, "device: missing"):
        config.parse(doc(device=None), EXTRA)


def test_bad_url_scheme():
    with raises(config.ConfigError, "platform.url"):
        config.parse(doc(platform__url="http://x"), EXTRA)


def test_unknown_platform_kind_lists_known():
    with raises(config.ConfigError) as r:
        config.parse(doc(platform__kind="thingsbord"), EXTRA)
    assert "platform.kind" in str(r.value) and "thingsboard" in str(r.value)


def test_kind_specific_required_key():
    with raises(config.ConfigError, "platform.token: missing"):
        config.parse(doc(platform__kind="blynk"), EXTRA)


def test_not_json():
    with raises(config.ConfigError, "not valid JSON"):
        config.parse("{device:", EXTRA)


def test_missing_file():
    with raises(config.ConfigError, "missing"):
        config.load("/nonexistent/config.json")


def test_positive_check():
    with raises(config.ConfigError, "outbox.max_bytes"):
        config.parse(doc(outbox={"max_bytes": 0}), EXTRA)


def test_null_means_absent_for_optional_keys():
    d = json.loads(doc())
    d["platform"]["ca"] = None
    d["platform"]["credentials"] = None
    c = config.parse(json.dumps(d), EXTRA)
    assert c["platform"]["ca"] is None and c["platform"]["credentials"] is None


def test_null_for_a_key_with_a_value_default_is_refused():
    d = json.loads(doc())
    d["platform"]["insecure"] = None
    with raises(config.ConfigError, "platform.insecure: expected true or false, got null"):
        config.parse(json.dumps(d), EXTRA)


def test_null_inside_a_list_is_refused_with_its_path():
    with raises(config.ConfigError, "ntp.servers[0]: expected text, got null"):
        config.parse(doc(ntp={"servers": [None]}), EXTRA)


def test_outbox_hold_ms_defaults_to_five_seconds_and_refuses_negative():
    assert config.parse(doc(), EXTRA)["outbox"]["hold_ms"] == 5000
    assert config.parse(doc(outbox={"hold_ms": 0}), EXTRA)["outbox"]["hold_ms"] == 0
    with raises(config.ConfigError, "outbox.hold_ms") as r:
        config.parse(doc(outbox={"hold_ms": -1}), EXTRA)
    assert "0 or more" in str(r.value)
