"""A fleet device on two clouds: [[devices.NAME.platforms]] renders config.json's `platforms`
(each section with its name and CA file), which the firmware's own checker accepts; mistakes
name the list entry; a one-cloud device renders as before."""

from __future__ import annotations

import json

from tests.certs import make_pki
from tests.host.test_provision import firmware_config_module
from tests.host.uplink_helpers import Env

SECRETS = {"UPLINK_SECRET_TB_TOKEN": "tb-token-5523", "UPLINK_SECRET_BL_TOKEN": "bl-token-8812"}


def fleet_text(ca: str, blynk_extra: str = "", tb_extra: str = "", board: str = "esp32-s3") -> str:
    # an S3: two TLS sessions at once do not fit an esp32-devkitc (config.tls_refusal)
    return f"""
[devices.gh]
board = "{board}"

[[devices.gh.platforms]]
kind = "thingsboard"
name = "ops"
url = "mqtts://tb.example.com:8883"
ca = "{ca}"
token = "secret:tb_token"
{tb_extra}

[[devices.gh.platforms]]
kind = "blynk"
token = "secret:bl_token"
template_id = "TMPL4fcxkOxNw"
template_name = "Greenhouse"
{blynk_extra}

[devices.solo.platform]
kind = "thingsboard"
url = "mqtt://tb.example.com:1883"
token = "secret:tb_token"
"""


def make_env(tmp_path, **kw):
    pki = make_pki(tmp_path / "pki")
    e = Env(tmp_path / "fleet", fleet_text(str(pki.ca_pem), **kw))
    e.env.update(SECRETS)
    return e, pki


def test_two_platforms_render_for_the_firmware(tmp_path):
    env, pki = make_env(tmp_path)
    r = env.run("provision", "gh")
    assert r.code == 0, r.output
    d = env.build / "devices" / "gh"
    cfg = json.loads((d / "config.json").read_text())
    assert "platform" not in cfg
    tb, bl = cfg["platforms"]
    assert tb["kind"] == "thingsboard" and tb["name"] == "ops" and tb["token"] == "tb-token-5523"
    assert tb["ca"] == "ca.der" and (d / "ca.der").read_bytes() == pki.ca_der.read_bytes()
    # Blynk's public host: its shipped root, in a CA file of its own
    assert bl["kind"] == "blynk" and "name" not in bl and bl["token"] == "bl-token-8812"
    assert bl["ca"] == "ca1.der" and (d / "ca1.der").exists()
    fw = firmware_config_module()
    extra = {"thingsboard": {"token": (str, None)},
             "blynk": {"token": (str, None), "template_id": (str, None), "template_name": (str, None)}}
    checked = fw.parse((d / "config.json").read_text(), extra)
    assert [p["name"] for p in checked["platforms"]] == ["ops", "blynk"]
    # one cloud: exactly as before
    assert env.run("provision", "solo").code == 0
    solo = json.loads((env.build / "devices" / "solo" / "config.json").read_text())
    assert "platforms" not in solo and "name" not in solo["platform"]


def test_a_mistake_in_the_second_cloud_names_it(tmp_path):
    env, _ = make_env(tmp_path, blynk_extra='tokn = "x"')
    r = env.run("validate")
    assert r.code != 0
    assert "device 'gh': platforms[1].tokn: unknown key" in r.output
    assert "device 'gh': platform." not in r.output  # the first is not reported twice


def test_two_clouds_of_one_kind_need_their_own_names(tmp_path):
    pki = make_pki(tmp_path / "pki")
    text = fleet_text(str(pki.ca_pem)).replace('kind = "blynk"', 'kind = "thingsboard"\nname = "ops"') \
        .replace('template_id = "TMPL4fcxkOxNw"\ntemplate_name = "Greenhouse"', 'url = "mqtt://tb2.example.com:1883"')
    env = Env(tmp_path / "fleet", text)
    env.env.update(SECRETS)
    r = env.run("validate")
    assert r.code != 0
    assert "platforms[1].name: 'ops' names platforms[0] too" in r.output


def test_platform_and_platforms_together_are_refused(tmp_path):
    pki = make_pki(tmp_path / "pki")
    text = fleet_text(str(pki.ca_pem)) + '\n[devices.gh.platform]\nkind = "thingsboard"\ntoken = "secret:tb_token"\n'
    env = Env(tmp_path / "fleet", text)
    r = env.run("validate")
    assert r.code != 0 and "not both" in r.output


def test_two_tls_clouds_on_an_esp32_devkitc_are_refused_with_the_board_and_the_fix(tmp_path):
    pki = make_pki(tmp_path / "pki")
    env = Env(tmp_path / "fleet", fleet_text(str(pki.ca_pem), board="esp32-devkitc"))
    env.env.update(SECRETS)
    r = env.run("validate")
    assert r.code != 0
    assert ("device 'gh': platforms: 2 TLS connections (TLS clouds, a token relay) on board esp32-devkitc"
            in " ".join(r.output.split())), r.output
    assert "esp32-s3" in r.output and "keep one" in r.output
    # one of them over plain MQTT: one TLS session, which fits
    env = Env(tmp_path / "fleet2", fleet_text(str(pki.ca_pem), board="esp32-devkitc").replace(
        'url = "mqtts://tb.example.com:8883"', 'url = "mqtt://tb.example.com:1883"'))
    env.env.update(SECRETS)
    r = env.run("validate")
    assert r.code == 0, r.output
