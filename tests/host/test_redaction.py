"""No command prints a secret: every command runs with known secret values and all of its
output (stdout + stderr, --json too, -v too) is scanned for them. Only `config show
--show-secrets` may print them, because it was asked to."""

from __future__ import annotations

import json

import pytest

from tests.host.test_build_flash import esp_image
from tests.host.uplink_helpers import Env
from tests.virtual_board.launcher import VirtualBoard

WIFI = "wifi-pw-Zq81x"
TOKEN = "tb-token-Kk29v"
CLIENT_SECRET = "wt-cs-Pp44r"
API_KEY = "wt-api-Mm73s"
NEW = "set-via-stdin-Yy55t"


def fleet(broker) -> str:
    return f"""
[defaults]
wifi.networks = [{{ ssid = "home", password = "secret:wifi" }}]

[relay]
url = "https://127.0.0.1:8443"
hosts = ["127.0.0.1"]

[devices.bench.platform]
kind = "thingsboard"
url = "{broker.url('mqtts')}"
ca = "{broker.pki.ca_pem}"
token = "secret:tb_token"

[devices.bench.telemetry]
interval_s = 1

[devices.scale]
board = "esp32-s3"
[devices.scale.platform]
kind = "weightron"
credentials = "relay"
oidc = {{ client_id = "abc", client_secret = "secret:wt_cs", api_key = "secret:wt_api" }}
"""


@pytest.fixture
def env(tmp_path, broker):
    e = Env(tmp_path / "fleet", fleet(broker))
    e.env.update({"UPLINK_SECRET_WIFI": WIFI, "UPLINK_SECRET_WT_CS": CLIENT_SECRET,
                  "UPLINK_SECRET_WT_API": API_KEY})
    r = e.run("secrets", "set", "tb_token", input=TOKEN + "\n")
    assert r.code == 0, r.output
    return e


def test_no_command_prints_a_secret(env, tmp_path):
    vb = VirtualBoard(tmp_path / "board").start()
    img = tmp_path / "mp.bin"
    esp_image(img, 9)  # an ESP32-S3 image header: flash-micropython checks it
    runs = []
    try:
        for verbosity in ([], ["-v"]):
            for args in (
                ["validate"], ["validate", "--json"],
                ["config", "show", "bench"], ["config", "show", "bench", "--json"],
                ["config", "show", "scale"], ["config", "show", "scale", "--json"],
                ["secrets", "list"], ["secrets", "list", "--json"],
                ["provision", "bench"], ["provision", "bench", "--json"],
                ["provision", "scale"], ["provision", "scale", "--json"],
                ["build", "--board", "host", "--json"],
                ["deploy", "bench", "--port", vb.port, "--dry-run"],
                ["deploy", "bench", "--port", vb.port, "--json"],
                ["deploy", "bench", "--port", vb.port, "--dry-run", "--json"],
                ["flash-micropython", "--port", vb.port, "--image", str(img), "--board", "esp32-s3", "--dry-run"],
                ["devices"], ["devices", "--json"],
                ["logs", "--port", vb.port, "--seconds", "0.5"],
                ["sim", "bench", "--seconds", "4"],
                ["run", "bench", "--seconds", "3"],
                ["token", "--help"], ["relay", "--help"],
            ):
                runs.append((args, env.run(*verbosity, *args)))
        runs.append((["secrets", "set", "other"], env.run("secrets", "set", "other", input=NEW + "\n")))
        runs.append((["secrets", "rm", "other"], env.run("secrets", "rm", "other")))
        # failures print too: a missing secret, a typo
        runs.append((["provision (missing)"], env.run("provision", "bench", env={"UPLINK_SECRET_WIFI": ""})))
    finally:
        vb.stop()
    relay_key = json.loads(env.secrets_file.read_text())["relay-key.scale"]
    secrets = [WIFI, TOKEN, CLIENT_SECRET, API_KEY, NEW, relay_key]
    for args, r in runs:
        assert r.code in (0, 4), (args, r.output)
        for s in secrets:
            assert s not in r.output, f"`uplink {' '.join(args)}` printed a secret"
    # the commands did their job with the real values
    cfg = json.loads((env.build / "devices" / "bench" / "config.json").read_text())
    assert cfg["platform"]["token"] == TOKEN and cfg["wifi"]["networks"][0]["password"] == WIFI
    sim_out = dict((tuple(a), r) for a, r in runs)[("sim", "bench", "--seconds", "4")].output
    assert "bench" in sim_out


def test_show_secrets_is_the_one_way_to_see_them(env):
    r = env.run("config", "show", "bench", "--show-secrets")
    assert TOKEN in r.stdout and WIFI in r.stdout
    r = env.run("config", "show", "scale", "--show-secrets", "--json")
    key = json.loads(r.stdout)["platform"]["credentials"]["key"]
    assert len(key) == 64
