"""`uplink provision`: config.json in the firmware's format, CA as DER, deterministic bundles,
0600 where secrets are."""

from __future__ import annotations

import importlib
import json
import stat
import sys

import pytest

from tests.certs import make_pki
from tests.host.uplink_helpers import REPO, Env

SECRETS = {
    "UPLINK_SECRET_WIFI_HOME": "wifi-pw-7781",
    "UPLINK_SECRET_TB_TOKEN": "tb-token-5523",
}


def fleet_text(ca: str) -> str:
    return f"""
[defaults]
board = "esp32-devkitc"
wifi.networks = [{{ ssid = "home", password = "secret:wifi_home" }}, {{ ssid = "open" }}]

[relay]
url = "https://192.168.1.10:8443"
hosts = ["192.168.1.10"]

[devices.gh.platform]
kind = "thingsboard"
url = "mqtts://tb.example.com:8883"
ca = "{ca}"
token = "secret:tb_token"

[devices.gh.telemetry]
interval_s = 10

[devices.scale]
board = "esp32-s3"  # a TLS cloud and the relay: more than an esp32-devkitc holds (config.tls_refusal)
[devices.scale.platform]
kind = "weightron"
credentials = "relay"
oidc = {{ client_id = "abc", client_secret = "secret:wt_cs", api_key = "secret:wt_api", application_id = "app-1" }}
"""


@pytest.fixture
def env(tmp_path):
    pki = make_pki(tmp_path / "pki")
    e = Env(tmp_path / "fleet", fleet_text(str(pki.ca_pem)))
    e.env.update(SECRETS)
    e.pki = pki  # type: ignore[attr-defined]
    return e


def firmware_config_module():
    """The firmware's own config checker (plain Python: it runs under CPython too)."""
    sys.path.insert(0, str(REPO / "firmware"))
    try:
        for name in [m for m in sys.modules if m == "uplink" or m.startswith("uplink.")]:
            del sys.modules[name]
        return importlib.import_module("uplink.config")
    finally:
        sys.path.remove(str(REPO / "firmware"))


def test_config_json_matches_the_firmware_format(env):
    r = env.run("provision", "gh")
    assert r.code == 0, r.output
    d = env.build / "devices" / "gh"
    cfg = json.loads((d / "config.json").read_text())
    assert list(cfg) == ["device", "wifi", "ntp", "platform", "telemetry", "outbox"]
    assert cfg["device"] == {"name": "gh", "board": "esp32-devkitc", "safe_mode_retry_s": 1200, "offline_reset_s": 3600,
                             "console": "data", "romfs": False, "frozen": False}
    assert cfg["wifi"] == {"networks": [{"ssid": "home", "password": "wifi-pw-7781"},
                                        {"ssid": "open", "password": ""}], "timeout_s": 20}
    p = cfg["platform"]
    assert p["kind"] == "thingsboard" and p["url"] == "mqtts://tb.example.com:8883"
    assert p["ca"] == "ca.der" and p["token"] == "tb-token-5523" and p["insecure"] is False
    assert cfg["telemetry"] == {"interval_s": 10, "batch": 20}  # health: the platform decides
    assert cfg["outbox"] == {"max_bytes": 32768, "dir": "outbox", "hold_ms": 5000}
    # the firmware's own checker accepts it as it is
    fw = firmware_config_module()
    checked = fw.parse((d / "config.json").read_text(), {"thingsboard": {"token": (str, None)}})
    assert checked["platform"]["token"] == "tb-token-5523"
    # CA converted PEM -> DER, byte for byte what the PKI wrote as DER
    assert (d / "ca.der").read_bytes() == env.pki.ca_der.read_bytes()
    assert json.loads((d / "board.json").read_text())["mpy_arch"] == "xtensawin"


def test_bundle_is_deterministic_and_private(env):
    assert env.run("provision", "gh").code == 0
    d = env.build / "devices" / "gh"
    first = {f.name: f.read_bytes() for f in d.iterdir()}
    assert env.run("provision", "gh").code == 0
    second = {f.name: f.read_bytes() for f in d.iterdir()}
    assert first == second
    assert sorted(first) == ["board.json", "ca.der", "config.json"]
    assert stat.S_IMODE((d / "config.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((d / "ca.der").stat().st_mode) == 0o644
    # a file that has no place in the bundle any more is removed
    # (plain MQTT: a TLS URL to a host with no shipped CA would need a ca)
    env.write_fleet(fleet_text(str(env.pki.ca_pem)).replace('ca = "', 'x = "').replace("x = ", "# x = ")
                    .replace("mqtts://tb.example.com:8883", "mqtt://tb.example.com:1883"))
    assert env.run("provision", "gh").code == 0
    assert not (d / "ca.der").exists()
    assert "ca" not in json.loads((d / "config.json").read_text())["platform"]


def test_relay_device_gets_url_ca_and_key(env):
    env.env.update({"UPLINK_SECRET_WT_CS": "x", "UPLINK_SECRET_WT_API": "y"})
    r = env.run("provision", "scale", "--json")
    assert r.code == 0, r.output
    d = env.build / "devices" / "scale"
    cfg = json.loads((d / "config.json").read_text())
    c = cfg["platform"]["credentials"]
    assert c["source"] == "relay" and c["url"] == "https://192.168.1.10:8443"
    assert c["ca"] == "relay_ca.der" and c["device_id"] == "scale" and c["min_life_s"] == 60
    assert len(c["key"]) == 64 and int(c["key"], 16) >= 0
    assert c["key"] not in r.output  # never printed
    assert (d / "relay_ca.der").read_bytes() == (env.root / "state" / "relay-pki" / "ca.der").read_bytes()
    assert cfg["platform"]["application_id"] == "app-1"
    assert cfg["platform"]["url"] == "wss://mqtt.weightron.cloud:443/mqtt"
    # the same key next time: the bundle stays byte-identical
    before = (d / "config.json").read_bytes()
    assert env.run("provision", "scale").code == 0
    assert (d / "config.json").read_bytes() == before


def test_missing_secret_exit_code_and_message(env):
    env.env.pop("UPLINK_SECRET_TB_TOKEN")
    r = env.run("provision", "gh")
    assert r.code == 4
    assert "secret 'tb_token' is not set" in r.stderr and "platform.token" in r.stderr


def test_config_show_redacts_unless_asked(env):
    r = env.run("config", "show", "gh", "--json")
    assert r.code == 0, r.output
    cfg = json.loads(r.stdout)
    assert cfg["platform"]["token"] == "secret:tb_token"
    assert cfg["wifi"]["networks"][0]["password"] == "secret:wifi_home"
    r = env.run("config", "show", "gh", "--json", "--show-secrets")
    assert json.loads(r.stdout)["platform"]["token"] == "tb-token-5523"


def test_thingsboard_registered_token_is_used(env):
    text = fleet_text(str(env.pki.ca_pem)).replace(
        'token = "secret:tb_token"', 'provision_key = "secret:pk"\nprovision_secret = "secret:ps"')
    env.write_fleet(text)
    env.env.update({"UPLINK_SECRET_PK": "pk-1", "UPLINK_SECRET_PS": "ps-1"})
    assert env.run("provision", "gh").code == 0
    p = json.loads((env.build / "devices" / "gh" / "config.json").read_text())["platform"]
    assert p["provision_key"] == "pk-1" and "token" not in p  # first-boot provisioning on the board
    env.env["UPLINK_SECRET_GH_TOKEN"] = "issued-9"  # what `provision --register` stores as gh.token
    assert env.run("provision", "gh").code == 0
    p = json.loads((env.build / "devices" / "gh" / "config.json").read_text())["platform"]
    assert p["token"] == "issued-9" and "provision_key" not in p


def test_the_clouds_own_hosts_get_their_shipped_root_ca(tmp_path):
    """README's examples (documented URL, no ca) must connect: the bundle carries the root
    the cloud's hosts chain to (host_tools/ca/README.md), as DER, named in config.json."""
    from host_tools.provision import ca_to_der

    root = ca_to_der((REPO / "host_tools" / "ca" / "isrg-root-x1.pem").read_bytes(), "x")
    e = Env(tmp_path, """
[devices.tb.platform]
kind = "thingsboard"
token = "secret:t"
[devices.bl.platform]
kind = "blynk"
url = "wss://fra1.blynk.cloud:443/mqtt"
token = "secret:t"
[devices.plain.platform]
kind = "thingsboard"
url = "mqtt://tb.local:1883"
token = "secret:t"
""")
    e.env.update({"UPLINK_SECRET_T": "tok"})
    for name in ("tb", "bl"):
        assert e.run("provision", name).code == 0
        d = e.build / "devices" / name
        assert (d / "ca.der").read_bytes() == root
        assert json.loads((d / "config.json").read_text())["platform"]["ca"] == "ca.der"
    assert e.run("provision", "plain").code == 0
    d = e.build / "devices" / "plain"
    assert not (d / "ca.der").exists()
    assert "ca" not in json.loads((d / "config.json").read_text())["platform"]


def test_weightron_watch_and_publish_reach_the_board(env):
    env.env.update({"UPLINK_SECRET_WT_CS": "x", "UPLINK_SECRET_WT_API": "y"})
    env.write_fleet(fleet_text(str(env.pki.ca_pem)).replace(
        'credentials = "relay"\n', 'credentials = "relay"\nwatch = ["devices/bridge-1", "hubs/#"]\n'
        'publish = true\n'))
    assert env.run("provision", "scale").code == 0, env.run("provision", "scale").output
    p = json.loads((env.build / "devices" / "scale" / "config.json").read_text())["platform"]
    assert p["watch"] == ["devices/bridge-1", "hubs/#"] and p["publish"] is True
    fw = firmware_config_module()
    schema = {"weightron": {"watch": ([str], None), "publish": (bool, False), "application_id": (str, None),
                            "device_id": (str, None)}}
    doc = {"device": {"name": "s", "board": "esp32-s3"}, "platform": p}
    assert fw.parse(json.dumps(doc), schema)["platform"]["publish"] is True
