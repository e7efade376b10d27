"""Fleet file validation: every message names the file, the device and the key path, and a
typo gets the nearest valid key."""

from __future__ import annotations

import json

import pytest

from host_tools.fleet import FleetError, load_fleet, secret_refs
from tests.host.uplink_helpers import REPO, Env

GOOD = """
[defaults]
board = "esp32-devkitc"
wifi.networks = [{ ssid = "home", password = "secret:wifi_home" }]

[relay]
url = "https://192.168.1.10:8443"
hosts = ["192.168.1.10"]

[devices.greenhouse-1.platform]
kind = "thingsboard"
token = "secret:gh1_token"

[devices.scale-1]
board = "esp32-s3"
[devices.scale-1.platform]
kind = "weightron"
credentials = "relay"
device_id = "scale-1"
oidc = { client_id = "abc", client_secret = "secret:wt_cs", api_key = "secret:wt_api" }

[devices.bz.platform]
kind = "biotz"
device_id = "d1"
customer_id = "c1"
password = "secret:bz_pw"
"""


def problems(tmp_path, text) -> list[str]:
    p = tmp_path / "fleet.toml"
    p.write_text(text)
    with pytest.raises(FleetError) as e:
        load_fleet(p)
    return e.value.problems


def test_good_fleet_loads_with_defaults_merged_and_defaults_of_the_oidc_tables(tmp_path):
    p = tmp_path / "fleet.toml"
    p.write_text(GOOD)
    f = load_fleet(p)
    assert sorted(f.devices) == ["bz", "greenhouse-1", "scale-1"]
    gh = f.devices["greenhouse-1"]
    assert gh.name == "greenhouse-1" and gh.board == "esp32-devkitc"
    assert gh.wifi.networks[0].ssid == "home"
    assert f.devices["scale-1"].board == "esp32-s3"
    oidc = f.devices["scale-1"].platform.oidc
    assert oidc.token_url == "https://auth.weightron.cloud/oidc/token"
    assert oidc.access_url == "https://api.weightron.cloud/access"
    assert f.devices["scale-1"].platform.relay is True
    assert f.relay.listen == "0.0.0.0:8443" and f.relay.min_life_s == 60
    assert secret_refs(f.devices["scale-1"]) == {
        "wifi.networks[0].password": "wifi_home",
        "platform.oidc.client_secret": "wt_cs",
        "platform.oidc.api_key": "wt_api",
    }


def test_typo_names_file_device_key_path_and_suggests(tmp_path):
    msgs = problems(tmp_path, GOOD.replace('token = "secret:gh1_token"', 'tokn = "secret:gh1_token"'))
    assert "fleet.toml:12: device 'greenhouse-1': platform.tokn: unknown key (did you mean 'token'?)" in msgs


def test_typo_deep_in_a_nested_table(tmp_path):
    msgs = problems(tmp_path, GOOD.replace("api_key =", "api_kye ="))
    assert "fleet.toml:20: device 'scale-1': platform.oidc.api_kye: unknown key (did you mean 'api_key'?)" in msgs
    # a missing key: the line of the table it belongs in
    assert "fleet.toml:20: device 'scale-1': platform.oidc.api_key: missing (required)" in msgs


def test_typo_in_a_list_item_gives_the_index(tmp_path):
    text = GOOD.replace('wifi.networks = [{ ssid = "home", password = "secret:wifi_home" }]', "")
    text += '[devices.bz.wifi]\nnetworks = [\n  { ssid = "a" },\n  { ssid = "b", pasword = "secret:w" },\n]\n'
    assert problems(tmp_path, text) == [
        "fleet.toml:30: device 'bz': wifi.networks[1].pasword: unknown key (did you mean 'password'?)"]


def test_a_mistake_in_defaults_is_reported_once_at_its_line(tmp_path):
    text = GOOD.replace('board = "esp32-devkitc"', 'board = "esp32-devkit"')
    text = text.replace('ssid = "home", password', 'ssid = "home", pasword')
    # scale-1 sets its own board: the board mistake is not its problem
    assert problems(tmp_path, text) == [
        "fleet.toml:3: [defaults] board: unknown board 'esp32-devkit' (did you mean 'esp32-devkitc'?); "
        "known boards: esp32-c3, esp32-devkitc, esp32-s3, host (profiles in boards/) "
        "(for devices 'greenhouse-1', 'bz')",
        "fleet.toml:4: [defaults] wifi.networks[0].pasword: unknown key (did you mean 'password'?) "
        "(for devices 'greenhouse-1', 'scale-1', 'bz')",
    ]


def test_unknown_kind_suggests_the_nearest(tmp_path):
    msgs = problems(tmp_path, GOOD.replace('kind = "thingsboard"', 'kind = "thingsbord"'))
    assert any("device 'greenhouse-1': platform.kind: unknown kind \"thingsbord\" (did you mean 'thingsboard'?" in m
               for m in msgs), msgs


def test_a_secret_written_in_clear_is_refused_without_echoing_it(tmp_path):
    msgs = problems(tmp_path, GOOD.replace('"secret:gh1_token"', '"hunter2-plain-token"'))
    m = [m for m in msgs if "platform.token" in m]
    assert m and "secret:NAME" in m[0]
    assert not any("hunter2-plain-token" in x for x in msgs)


def test_wrong_type_says_what_was_expected(tmp_path):
    msgs = problems(tmp_path, GOOD + '\n[devices.bz.telemetry]\ninterval_s = "often"\nbatch = 2.5\n'
                    'health = 1\n[devices.bz.outbox]\ndir = 7\nmax_bytes = 0\n')
    assert msgs == [
        "fleet.toml:29: device 'bz': telemetry.interval_s: expected a whole number, got the string \"often\"",
        "fleet.toml:30: device 'bz': telemetry.batch: expected a whole number, got the number 2.5 (no decimal point)",
        "fleet.toml:31: device 'bz': telemetry.health: expected true or false, got the number 1",
        "fleet.toml:33: device 'bz': outbox.dir: expected a string in quotes, got the number 7 (put it in quotes)",
        "fleet.toml:34: device 'bz': outbox.max_bytes: expected a number above 0, got the number 0",
    ]
    assert not any("Input should" in m for m in msgs)


def test_relay_credentials_need_a_relay_table(tmp_path):
    text = GOOD.split("[relay]")[0] + "[devices" + GOOD.split("[devices", 1)[1]
    msgs = problems(tmp_path, text)
    assert any("device 'scale-1': platform.credentials" in m and "[relay]" in m for m in msgs), msgs


def test_unknown_top_level_table_and_unknown_device(tmp_path):
    msgs = problems(tmp_path, GOOD + "\n[device.x]\nboard='host'\n")
    assert any("device: unknown top-level table (did you mean 'devices'?)" in m for m in msgs), msgs
    p = tmp_path / "ok.toml"
    p.write_text(GOOD)
    with pytest.raises(FleetError) as e:
        load_fleet(p).device("greenhouse1")
    assert "did you mean 'greenhouse-1'?" in str(e.value)


def test_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(FleetError) as e:
        load_fleet(tmp_path / "nope.toml")
    assert "--fleet" in str(e.value)


def test_cli_validate_exit_codes_and_json(tmp_path):
    env = Env(tmp_path, GOOD.replace("tokn", "token").replace('token = "secret:gh1_token"',
                                                              'tokn = "secret:gh1_token"'))
    r = env.run("validate")
    assert r.code == 3
    assert ("error: fleet.toml:12: device 'greenhouse-1': platform.tokn: unknown key (did you mean 'token'?)\n"
            in r.stderr)
    r = env.run("validate", "--json")
    assert r.code == 3 and '"ok": false' in r.stdout
    env.write_fleet(GOOD)
    r = env.run("validate", "--no-secrets")
    assert r.code == 0, r.output
    r = env.run("validate")  # the secrets are not set
    assert r.code == 4
    assert "secret 'gh1_token' is not set" in r.stderr


def test_types_are_strict(tmp_path):
    msgs = problems(tmp_path, GOOD + '\n[devices.bz.telemetry]\ninterval_s = "30"\nhealth = "yes"\n'
                    'batch = "20"\n[devices.bz.wifi]\ntimeout_s = "true"\n')
    assert msgs == [
        "fleet.toml:29: device 'bz': telemetry.interval_s: expected a whole number, got the string \"30\" "
        "(remove the quotes)",
        "fleet.toml:30: device 'bz': telemetry.health: expected true or false, got the string \"yes\" "
        "(write true or false, no quotes)",
        "fleet.toml:31: device 'bz': telemetry.batch: expected a whole number, got the string \"20\" "
        "(remove the quotes)",
        "fleet.toml:33: device 'bz': wifi.timeout_s: expected a whole number, got the string \"true\"",
    ]


def test_a_typo_in_relay_is_one_error_not_two(tmp_path):
    # with `ur` for `url` the relay has no url: the relay device must not be told again
    assert problems(tmp_path, GOOD.replace('url = "https://192.168.1.10:8443"',
                                           'ur = "https://192.168.1.10:8443"')) == [
        "fleet.toml:7: relay.ur: unknown key (did you mean 'url'?)"]


OIDC = GOOD.replace('oidc = { client_id = "abc",', 'oidc = { token_url = "TOKEN_URL", client_id = "abc",')


def test_an_oidc_token_url_must_be_https(tmp_path):
    assert problems(tmp_path, OIDC.replace("TOKEN_URL", "auth.weightron.cloud/oidc/token")) == [
        "fleet.toml:20: device 'scale-1': platform.oidc.token_url: expected an https:// URL, "
        "got \"auth.weightron.cloud/oidc/token\" (add https://)"]
    assert problems(tmp_path, OIDC.replace("TOKEN_URL", "http://auth.weightron.cloud/oidc/token")) == [
        "fleet.toml:20: device 'scale-1': platform.oidc.token_url: http:// would send the client "
        "secret in clear: use https://"]
    assert problems(tmp_path, OIDC.replace("TOKEN_URL", "http://127.0.0.1:8080/token")) == [
        "fleet.toml:20: device 'scale-1': platform.oidc.token_url: http:// would send the client "
        "secret in clear: use https://, or for a provider on this machine set allow_loopback_http = true"]
    # allowed for loopback only, and only when asked for
    p = tmp_path / "fleet.toml"
    p.write_text(OIDC.replace('"TOKEN_URL",', '"http://127.0.0.1:8080/token", allow_loopback_http = true,'))
    assert load_fleet(p).devices["scale-1"].platform.oidc.token_url == "http://127.0.0.1:8080/token"
    assert problems(tmp_path, OIDC.replace('"TOKEN_URL",', '"http://10.0.0.5/token", allow_loopback_http = true,')) == [
        "fleet.toml:20: device 'scale-1': platform.oidc.token_url: http:// would send the client "
        "secret in clear: use https://"]
    env = Env(tmp_path / "cli", OIDC.replace("TOKEN_URL", "auth.weightron.cloud/oidc/token"))
    r = env.run("validate", "--no-secrets")
    assert r.code == 3 and "platform.oidc.token_url: expected an https:// URL" in r.stderr


def test_a_weightron_scope_is_openid_with_offline_access_the_only_option(tmp_path):
    # Weightron's token endpoint: openid required, offline_access the only other value
    scoped = GOOD.replace('oidc = { client_id = "abc",', 'oidc = { scope = "SCOPE", client_id = "abc",')
    assert problems(tmp_path, scoped.replace("SCOPE", "offline_access")) == [
        "fleet.toml:20: device 'scale-1': platform.oidc.scope: Weightron requires openid in every request, "
        "got 'offline_access': use \"openid\" (optionally \"openid offline_access\")"]
    assert problems(tmp_path, scoped.replace("SCOPE", "openid profile email")) == [
        "fleet.toml:20: device 'scale-1': platform.oidc.scope: Weightron does not accept 'profile email': "
        "the scope is \"openid\", optionally with \"offline_access\""]
    p = tmp_path / "fleet.toml"
    for good in ("openid", "openid offline_access", "offline_access  openid"):
        p.write_text(scoped.replace("SCOPE", good))
        assert sorted(load_fleet(p).devices["scale-1"].platform.oidc.scope.split()) == sorted(good.split())
    env = Env(tmp_path / "cli", scoped.replace("SCOPE", "openid profile"))
    r = env.run("validate", "--no-secrets")
    assert r.code == 3 and "platform.oidc.scope: Weightron does not accept 'profile'" in r.stderr


def test_a_blynk_sub_devices_info_needs_its_template_and_version(tmp_path):
    gw = ('\n[devices.gw]\nboard = "esp32-devkitc"\n[devices.gw.platform]\nkind = "blynk"\ntoken = "secret:gt"\n'
          'gateway_tokens = { pump-1 = "secret:p1" }\n'
          'gateway_info = { pump-1 = { template_id = "TMPL1" }, pump-2 = { template_id = "T", version = "1" } }\n')
    msgs = problems(tmp_path, GOOD + gw)
    assert [m for m in msgs if "gateway_info" in m] == [
        "fleet.toml:34: device 'gw': platform.gateway_info.pump-1: expected {template_id, version} (each text; "
        "build optional)",
        "fleet.toml:34: device 'gw': platform.gateway_info.pump-2: not a sub-device in platform.gateway_tokens"], msgs


def test_name_key_is_refused(tmp_path):
    msgs = problems(tmp_path, GOOD + '\n[devices.x]\nname = "y"\nplatform = { kind = "blynk", token = "secret:t" }\n')
    assert any("device 'x': name: unknown key" in m for m in msgs), msgs


def test_validate_checks_ca_files(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    env = Env(tmp_path, '[devices.d.platform]\nkind = "blynk"\ntoken = "secret:t"\nca = "bad.pem"\n')
    r = env.run("validate", "--no-secrets")
    assert r.code == 3 and "device 'd': platform.ca: " in r.stderr and "not a PEM or DER certificate" in r.stderr
    env.write_fleet('[devices.d.platform]\nkind = "blynk"\ntoken = "secret:t"\nca = "gone.pem"\n')
    r = env.run("validate", "--no-secrets")
    assert r.code == 3 and "cannot read" in r.stderr and "gone.pem" in r.stderr


def test_the_documented_example_fleet_is_valid(tmp_path):
    from tests.host.uplink_helpers import REPO

    doc = (REPO / "docs" / "host_tools.md").read_text()
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    p = tmp_path / "fleet.toml"
    p.write_text(example)
    f = load_fleet(p)
    assert {"greenhouse-1", "pump", "scale-1", "field-7"} <= set(f.devices)


def test_a_tls_url_with_no_ca_and_no_shipped_default_is_refused_naming_the_fix(tmp_path):
    r = Env(tmp_path, '[devices.x.platform]\nkind = "thingsboard"\n'
            'url = "mqtts://tb.example.com:8883"\ntoken = "secret:t"\n').run("validate", "--no-secrets")
    assert r.code == 3
    assert ("fleet.toml:1: device 'x': platform.ca: mqtts://tb.example.com:8883 is TLS and uplink "
            "ships no CA for that host (set ca = \"path/to/root.pem\", the CA that signed the "
            "server's certificate)") in r.stderr
    # the same with a ca, with insecure, or on the cloud's own host (a shipped root): valid
    for extra in ('ca = "root.pem"\n', "insecure = true\n"):
        (tmp_path / "root.pem").write_bytes((REPO / "host_tools/ca/isrg-root-x1.pem").read_bytes())
        e = Env(tmp_path, '[devices.x.platform]\nkind = "thingsboard"\n'
                'url = "mqtts://tb.example.com:8883"\ntoken = "secret:t"\n' + extra)
        assert e.run("validate", "--no-secrets").code == 0
    for kind, keys in (("thingsboard", 'token = "secret:t"'), ("blynk", 'token = "secret:t"'),
                       ("biotz", 'device_id = "d"\ncustomer_id = "c"\npassword = "secret:p"')):
        e = Env(tmp_path, f'[devices.x.platform]\nkind = "{kind}"\n{keys}\n')
        assert e.run("validate", "--no-secrets").code == 0, kind


def test_biotz_relay_is_for_http_ingestion_and_http_needs_the_relay(tmp_path):
    base = ('[relay]\nurl = "https://10.0.0.1:8443"\n[devices.b.platform]\nkind = "biotz"\n'
            'device_id = "d"\ncustomer_id = "c"\n')
    oidc = 'oidc = { username = "d@devices.data-ingestion.biotz.io", password = "secret:p" }\n'
    assert problems(tmp_path, base + 'credentials = "relay"\n' + oidc) == [
        "fleet.toml:7: device 'b': platform.credentials: Biotz MQTT logs in with the Device ID and "
        "the device password; the relay's id_token is for HTTP ingestion (set transport = "
        "\"http\", or password = \"secret:NAME\" without credentials)"]
    assert problems(tmp_path, base + 'transport = "http"\npassword = "secret:p"\n') == [
        "fleet.toml:7: device 'b': platform.transport: \"http\" posts with an id_token from the "
        "token relay (set credentials = \"relay\" and [platform.oidc])"]
    p = tmp_path / "fleet.toml"
    p.write_text(base + 'transport = "http"\ncredentials = "relay"\n' + oidc)
    assert load_fleet(p).device("b").platform.device_url() == "https://ingestion-http.biotz.io"


def test_blynk_gateway_with_an_oauth_client_validates_and_renders(tmp_path):
    base = ('[devices.gw.platform]\nkind = "blynk"\noauth_client_id = "oc-41"\n'
            'oauth_client_secret = "secret:oc"\n')
    assert problems(tmp_path, base) == [
        "fleet.toml:1: device 'gw': platform.gateway_tokens: missing: an OAuth client login is a "
        "gateway session (gateway_tokens = { pump-1 = \"secret:NAME\" })"]
    assert problems(tmp_path, base.replace('oauth_client_secret = "secret:oc"\n', "")
                    + 'gateway_tokens = { pump-1 = "secret:p1" }\n') == [
        "fleet.toml:1: device 'gw': platform.oauth_client_id and oauth_client_secret: both are "
        "needed (the OAuth client's Client ID and Client Secret)"]
    e = Env(tmp_path, base + 'gateway_tokens = { pump-1 = "secret:p1" }\n')
    e.env.update(UPLINK_SECRET_OC="oauth-secret-19", UPLINK_SECRET_P1="pump-token-7")
    r = e.run("provision", "gw")
    assert r.code == 0, r.output
    p = json.loads((e.build / "devices" / "gw" / "config.json").read_text())["platform"]
    assert p["oauth_client_id"] == "oc-41" and p["oauth_client_secret"] == "oauth-secret-19"
    assert p["gateway_tokens"] == {"pump-1": "pump-token-7"} and "token" not in p
    assert "oauth-secret-19" not in r.output


def test_a_firmware_key_the_host_never_listed_is_checked_by_the_firmwares_rule(tmp_path):
    # telemetry.interval_ms: declared in firmware/uplink/config.py only
    msgs = problems(tmp_path, GOOD + "\n[devices.bz.telemetry]\ninterval_ms = 5\n")
    assert msgs == ["fleet.toml:29: device 'bz': telemetry.interval_ms: expected at least 10 (ms; "
                    "readings that fast wear the flash out in months, see docs/config.md), got the "
                    "number 5"]
    p = tmp_path / "fleet.toml"
    p.write_text(GOOD + "\n[devices.bz.telemetry]\ninterval_ms = 500\n")
    assert load_fleet(p).devices["bz"].telemetry.interval_ms == 500


def test_a_tls_cloud_with_relay_credentials_on_an_esp32_devkitc_is_refused(tmp_path):
    # measured (the ESP32 model's chip mode): after the relay's HTTPS fetch, the cloud's TLS
    # handshake fails with ENOMEM on every try on an esp32-devkitc; an esp32-s3 holds both
    msgs = problems(tmp_path, GOOD.replace('board = "esp32-s3"', 'board = "esp32-devkitc"'))
    assert any("device 'scale-1': platform: 2 TLS connections (TLS clouds, a token relay) on board "
               "esp32-devkitc" in m and "esp32-s3" in m for m in msgs), msgs
    assert len(msgs) == 1, msgs  # one device refused, the others (one TLS cloud each) fit


def test_validate_warns_of_a_devkitc_over_tls_from_its_filesystem_and_names_the_fix(tmp_path):
    # measured (README "Memory"): its reconnects fail for memory; ROMFS or a C3/S3 fixes it
    from tests.host.uplink_helpers import Env

    # (no url: ThingsBoard Cloud's default, mqtts with the CA uplink ships)
    dev = '[devices.{n}]\nboard = "{b}"\n{extra}[devices.{n}.platform]\nkind = "thingsboard"\n{u}token = "secret:t"\n'
    fleet = (dev.format(n="tls", b="esp32-devkitc", extra="", u="")
             + dev.format(n="plain", b="esp32-devkitc", extra="", u='url = "mqtt://tb.example:1883"\n')
             + dev.format(n="rom", b="esp32-devkitc", extra="romfs = true\n", u="")
             + dev.format(n="s3", b="esp32-s3", extra="", u=""))
    env = Env(tmp_path, fleet)
    r = env.run("validate", "--no-secrets")
    assert r.code == 0, r.output
    assert "device 'tls': board esp32-devkitc over TLS with the firmware on its filesystem" in r.stderr
    assert "romfs = true" in r.stderr and "Firmware in ROMFS" in r.stderr
    for other in ("plain", "rom", "s3"):
        assert f"device '{other}'" not in r.stderr
    r = env.run("validate", "--no-secrets", "--json")
    assert [w.split(":")[0] for w in json.loads(r.stdout)["warnings"]] == ["device 'tls'"]
