# `platforms`: one device on several clouds. `platform` (one cloud) stays as it was.
import json

from mptest import raises
from uplink import config

EXTRA = {"thingsboard": {"token": (str, None)}, "blynk": {"token": (str, config.REQUIRED)}}
BASE = {"device": {"name": "greenhouse-1"}}
TB = {"kind": "thingsboard", "url": "mqtt://tb.local:1883", "token": "t"}
BLYNK = {"kind": "blynk", "token": "b"}


def parse(**top):
    d = dict(BASE)
    d.update(top)
    return config.parse(json.dumps(d), EXTRA)


def test_one_platform_is_unchanged():
    c = parse(platform=TB)
    assert "platforms" not in c and c["platform"]["name"] is None
    assert c["platform"]["token"] == "t" and c["platform"]["keepalive"] == 60


def test_two_platforms_each_checked_and_named_after_their_kind():
    c = parse(platforms=[TB, BLYNK])
    assert [p["name"] for p in c["platforms"]] == ["thingsboard", "blynk"]
    assert c["platform"] is c["platforms"][0]  # the main one: what `platform` means elsewhere
    assert c["platforms"][1]["token"] == "b" and c["platforms"][1]["keepalive"] == 60
    assert c["telemetry"]["interval_s"] == 30


def test_errors_name_the_list_entry():
    with raises(config.ConfigError, "platforms[1].token: missing"):
        parse(platforms=[TB, {"kind": "blynk"}])
    with raises(config.ConfigError, "platforms[1].kind"):
        parse(platforms=[TB, {"kind": "blink", "token": "x"}])
    with raises(config.ConfigError, "platforms[0].tokn: unknown key"):
        parse(platforms=[{"kind": "thingsboard", "tokn": "x"}])


def test_two_of_a_kind_need_names_of_their_own():
    old = dict(TB)
    new = dict(TB, url="mqtt://tb-new.local:1883")
    with raises(config.ConfigError, "platforms[1].name: 'thingsboard' is platforms[0]'s name too"):
        parse(platforms=[old, new])
    c = parse(platforms=[dict(old, name="tb-old"), dict(new, name="tb-new")])
    assert [p["name"] for p in c["platforms"]] == ["tb-old", "tb-new"]


def test_a_name_must_fit_the_outbox_state_line():
    with raises(config.ConfigError, "platforms[0].name: expected 1 to 24 letters"):
        parse(platforms=[dict(TB, name="tb old")])
    with raises(config.ConfigError, "platform.name"):
        parse(platform=dict(TB, name="a=b"))


def test_platform_and_platforms_together_or_empty_are_refused():
    with raises(config.ConfigError, "not both"):
        parse(platform=TB, platforms=[BLYNK])
    with raises(config.ConfigError, "platforms: expected a list of one or more"):
        parse(platforms=[])
    with raises(config.ConfigError, "platform: missing"):
        parse()


def test_two_tls_clouds_on_an_esp32_devkitc_are_refused_at_boot_with_the_board_and_the_fix():
    tls_tb = dict(TB, url="mqtts://tb.local:8883")
    with raises(config.ConfigError, "2 TLS connections (TLS clouds, a token relay) on board esp32-devkitc") as r:
        parse(device={"name": "gh", "board": "esp32-devkitc"}, platforms=[tls_tb, BLYNK])  # Blynk's default: mqtts
    assert "esp32-s3" in str(r.value) and "keep one" in str(r.value)
    # one TLS session fits; an S3 holds two
    assert len(parse(device={"name": "gh", "board": "esp32-devkitc"}, platforms=[TB, BLYNK])["platforms"]) == 2
    assert len(parse(device={"name": "gh", "board": "esp32-s3"}, platforms=[tls_tb, BLYNK])["platforms"]) == 2


def test_a_tls_cloud_with_relay_credentials_on_an_esp32_devkitc_is_refused_at_boot():
    relay = {"source": "relay", "url": "https://10.0.0.1:8443", "device_id": "d", "key": "00"}
    tb = dict(TB, url="mqtts://tb.local:8883", credentials=relay)
    with raises(config.ConfigError, "platform: 2 TLS connections (TLS clouds, a token relay) on board esp32-devkitc"):
        parse(device={"name": "gh", "board": "esp32-devkitc"}, platform=tb)
    assert parse(device={"name": "gh", "board": "esp32-devkitc"}, platform=dict(tb, url="mqtt://tb.local:1883"))
    assert parse(device={"name": "gh", "board": "esp32-s3"}, platform=tb)


def test_two_tls_clouds_on_an_esp32_c3_are_refused_but_a_cloud_with_the_relay_is_not():
    # measured: a C3's two TLS sessions connect but cannot reconnect; a cloud with the relay does
    tls_tb = dict(TB, url="mqtts://tb.local:8883")
    with raises(config.ConfigError, "2 TLS connections (TLS clouds, a token relay) on board esp32-c3"):
        parse(device={"name": "gh", "board": "esp32-c3"}, platforms=[tls_tb, BLYNK])
    relay = {"source": "relay", "url": "https://10.0.0.1:8443", "device_id": "d", "key": "00"}
    assert parse(device={"name": "gh", "board": "esp32-c3"}, platform=dict(tls_tb, credentials=relay))


def test_the_firmware_in_romfs_makes_room_for_two_tls_clouds_on_a_c3_not_on_a_devkitc():
    # measured (tests/integration/test_chip_memory.py): a C3 whose firmware runs from ROMFS
    # keeps its first 64 KB GC area and reconnects both; a devkitc's GC heap still grows once
    tls_tb = dict(TB, url="mqtts://tb.local:8883")
    with raises(config.ConfigError, "on board esp32-c3") as r:
        parse(device={"name": "gh", "board": "esp32-c3"}, platforms=[tls_tb, BLYNK])
    assert "device.romfs" in str(r.value)
    c3 = parse(device={"name": "gh", "board": "esp32-c3", "romfs": True}, platforms=[tls_tb, BLYNK])
    assert c3["device"]["romfs"] is True and len(c3["platforms"]) == 2
    with raises(config.ConfigError, "on board esp32-devkitc") as r:
        parse(device={"name": "gh", "board": "esp32-devkitc", "romfs": True}, platforms=[tls_tb, BLYNK])
    assert "device.romfs" not in str(r.value)  # not offered where it does not help


def test_the_firmware_frozen_into_the_image_counts_as_romfs_and_not_beside_it():
    # measured (make bench BENCH_ARGS="firmware frozen"): a frozen C3 keeps 57.6 KB of IDF heap
    # with two TLS clouds; a frozen devkitc 0.9 KB
    tls_tb = dict(TB, url="mqtts://tb.local:8883")
    c3 = parse(device={"name": "gh", "board": "esp32-c3", "frozen": True}, platforms=[tls_tb, BLYNK])
    assert c3["device"]["frozen"] is True and c3["device"]["romfs"] is False
    with raises(config.ConfigError, "on board esp32-devkitc"):
        parse(device={"name": "gh", "board": "esp32-devkitc", "frozen": True}, platforms=[tls_tb, BLYNK])
    with raises(config.ConfigError, "device.frozen: device.romfs is set too"):
        parse(device={"name": "gh", "romfs": True, "frozen": True}, platform=TB)
