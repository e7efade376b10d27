"""`uplink token` and `uplink relay`'s fleet mapping, against the loopback OIDC provider."""

from __future__ import annotations

import asyncio
import json
import ssl

import httpx
import pytest
from typer.testing import CliRunner

from host_tools.relay import PATH, sign_headers
from tests.oidc_provider import (
    BIOTZ_USER,
    WEIGHTRON_API_KEY,
    WEIGHTRON_CLIENT,
)

FLEET = """
[relay]
url = "https://127.0.0.1:8443"
hosts = ["127.0.0.1", "localhost"]
listen = "127.0.0.1:0"
min_life_s = 30

[devices.scale-1]
board = "host"
[devices.scale-1.platform]
kind = "weightron"
device_id = "scale-1"
credentials = "relay"
[devices.scale-1.platform.oidc]
token_url = "{token_url}"
access_url = "{access_url}"
client_id = "{client_id}"
client_secret = "secret:wt_secret"
api_key = "secret:wt_api_key"

[devices.scale-2]
board = "host"
[devices.scale-2.platform]
kind = "weightron"
device_id = "scale-2"
credentials = "relay"
[devices.scale-2.platform.oidc]
token_url = "{token_url}"
access_url = "{access_url}"
client_id = "{client_id}"
client_secret = "secret:wt_secret"
api_key = "secret:wt_api_key"

[devices.field-7]
board = "host"
[devices.field-7.platform]
kind = "biotz"
device_id = "field-7"
customer_id = "c-1"
transport = "http"
credentials = "relay"
[devices.field-7.platform.oidc]
token_url = "{token_url}"
username = "{bz_user}"
password = "secret:bz_password"

[devices.tb-1]
board = "host"
[devices.tb-1.platform]
kind = "thingsboard"
token = "secret:tb_token"
"""

SECRETS = {"wt_secret": WEIGHTRON_CLIENT[1], "wt_api_key": WEIGHTRON_API_KEY,
           "bz_password": BIOTZ_USER[1], "tb_token": "tb-token-value-123"}


@pytest.fixture
def fleet(provider, tmp_path, monkeypatch):
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET.format(token_url=provider.token_url, access_url=provider.access_url,
                                 client_id=WEIGHTRON_CLIENT[0], bz_user=BIOTZ_USER[0]))
    secrets_file = tmp_path / "secrets.json"
    secrets_file.write_text(json.dumps(SECRETS))
    secrets_file.chmod(0o600)
    monkeypatch.setenv("SSL_CERT_FILE", provider.ca_pem)  # the provider's private CA
    monkeypatch.setenv("UPLINK_STATE_DIR", str(tmp_path / "state"))
    return path, secrets_file


def uplink(fleet, *args):
    from host_tools.cli import app

    path, secrets_file = fleet
    r = CliRunner().invoke(app, ["--fleet", str(path), "--secrets-file", str(secrets_file),
                                 "--no-keyring", *args])
    return r


def test_token_hidden_unless_revealed(fleet, provider):
    r = uplink(fleet, "token", "scale-1")
    assert r.exit_code == 0, r.output
    assert "app-5f1e2d" in r.output and "client_credentials" in r.output
    assert "hidden" in r.output
    for s in SECRETS.values():
        assert s not in r.output
    r = uplink(fleet, "token", "scale-1", "--json")
    data = json.loads(r.stdout)
    assert data["username"] == "app-5f1e2d" and "token" not in data
    assert 290 <= data["expires_in_s"] <= 300
    r = uplink(fleet, "token", "scale-1", "--json", "--reveal")
    tok = json.loads(r.stdout)["token"]
    assert provider.token_valid(tok)


def test_token_biotz_is_the_id_token(fleet, provider):
    r = uplink(fleet, "token", "field-7", "--json", "--reveal")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["grant"] == "password" and data["credential"] == "id_token"
    assert provider.verify_id_token(data["token"])["sub"] == BIOTZ_USER[0]
    assert BIOTZ_USER[1] not in r.output


def test_token_errors(fleet):
    r = uplink(fleet, "token", "tb-1")
    assert r.exit_code == 3 and "oidc" in r.output
    r = uplink(fleet, "token", "scale-9")
    assert r.exit_code == 3 and "scale-1" in r.output  # did you mean


def test_token_refused_by_provider(fleet, tmp_path):
    path, secrets_file = fleet
    bad = dict(SECRETS, wt_secret="wrong-secret-xyz")
    secrets_file.write_text(json.dumps(bad))
    r = uplink(fleet, "token", "scale-1")
    assert r.exit_code == 7 and "invalid_client" in r.output
    assert "wrong-secret-xyz" not in r.output


def test_build_relay_from_fleet_shares_sources_and_keys(fleet, provider):
    from host_tools import relay_pki, tokens_cli
    from host_tools.fleet import load_fleet
    from host_tools.secrets import SecretStore

    path, secrets_file = fleet
    store = SecretStore(secrets_file, use_keyring=False, env={})
    fl = load_fleet(path)
    relay = tokens_cli.build_relay(fl, store)
    assert sorted(relay.devices) == ["field-7", "scale-1", "scale-2"]  # not the TB device
    assert relay.devices["scale-1"].source is relay.devices["scale-2"].source
    assert relay.settings.min_life_s == 30
    # the same key provision gives the device, and the same PKI
    key = relay_pki.device_key(store, "scale-2")
    assert relay.devices["scale-2"].key == key
    pki = relay_pki.ensure_relay_pki(fl.state_dir, ["127.0.0.1", "localhost"])
    assert relay.settings.cert_pem == pki.cert_pem
    provider.reset_counters()

    async def go():
        port = await relay.start()
        ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
        try:
            async with httpx.AsyncClient(verify=ctx) as c:
                rs = await asyncio.gather(*(
                    c.get(f"https://127.0.0.1:{port}{PATH}", headers=sign_headers(d, relay_pki.device_key(store, d)))
                    for d in ("scale-1", "scale-2", "scale-1", "scale-2")))
        finally:
            await relay.stop()
        return rs

    rs = asyncio.run(go())
    assert [r.status_code for r in rs] == [200] * 4
    assert len({r.json()["password"] for r in rs}) == 1
    assert provider.token_requests == 1  # two devices, one shared credential, one call


def test_uplink_relay_command_serves_and_audits(fleet, provider, tmp_path):
    """The real `uplink relay` process: listens, answers a signed request, logs the audit line
    without secrets, stops on SIGTERM."""
    import os
    import subprocess
    import sys

    from host_tools import relay_pki
    from host_tools.secrets import SecretStore
    from tests.services import free_port, wait_port

    path, secrets_file = fleet
    port = free_port()
    env = dict(os.environ, SSL_CERT_FILE=provider.ca_pem, UPLINK_STATE_DIR=str(tmp_path / "state"))
    exe = os.path.join(os.path.dirname(sys.executable), "uplink")
    proc = subprocess.Popen(
        [exe, "--fleet", str(path), "--secrets-file", str(secrets_file), "--no-keyring",
         "relay", "--listen", f"127.0.0.1:{port}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    head: list[str] = []
    try:
        wait_port(port, timeout=20)
        store = SecretStore(secrets_file, use_keyring=False, env={})
        key = relay_pki.device_key(store, "field-7")  # created by the relay at start
        pki = relay_pki.ensure_relay_pki(tmp_path / "state", ["127.0.0.1", "localhost"])
        ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
        r = httpx.get(f"https://localhost:{port}{PATH}", headers=sign_headers("field-7", key),
                      verify=ctx)
        assert r.status_code == 200
        token = r.json()["password"]
        assert provider.verify_id_token(token)["sub"] == BIOTZ_USER[0]
        # the sentinel: the request's audit line, written after everything the relay logged
        # while answering it (one stream, in order); the secrets are checked against all of it
        assert proc.stdout is not None
        while "uplink.relay.audit" not in (line := proc.stdout.readline().decode()):
            head.append(line)
            assert line, "the relay ended without an audit line:\n" + "".join(head)
        head.append(line)
    finally:
        proc.terminate()
        out = "".join(head) + proc.communicate(timeout=10)[0].decode()
    assert "uplink.relay.audit" in out and "device=field-7" in out and "status=200" in out
    for s in [token, key, *SECRETS.values()]:
        assert s not in out


def scale_fleet(token_url: str, oidc_extra: str = "") -> str:
    """A Weightron device whose token comes through the relay, from the provider at token_url."""
    return f"""
[devices.scale.platform]
kind = "weightron"
credentials = "relay"
[devices.scale.platform.oidc]
token_url = "{token_url}"
{oidc_extra}client_id = "c"
client_secret = "secret:cs"
api_key = "secret:ak"
[relay]
url = "https://127.0.0.1:8443"
"""


def test_token_errors_exit_with_the_cloud_code(tmp_path):
    import socket

    from tests.host.uplink_helpers import Env

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    env = Env(tmp_path, scale_fleet(f"https://127.0.0.1:{port}/token"))
    r = env.run("token", "scale", env={"UPLINK_SECRET_CS": "cs-value-77", "UPLINK_SECRET_AK": "ak-value-77"})
    assert r.code == 7, r.output
    assert f"error: cannot reach https://127.0.0.1:{port}/token" in r.stderr
    assert "cs-value-77" not in r.output and "ak-value-77" not in r.output


def test_token_masks_a_secret_the_provider_echoes_and_says_which_secret_is_missing(tmp_path):
    """`uplink token` prints through the same redaction as every other command: a provider
    that quotes the client secret back in its refusal does not get it onto the screen."""
    import base64
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from urllib.parse import parse_qs

    from tests.host.uplink_helpers import Env

    class Echo(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            sent = parse_qs(body).get("client_secret", [""])[0]
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Basic "):
                sent = base64.b64decode(auth[6:]).decode().split(":", 1)[1]
            reply = json.dumps({"error": "invalid_client",
                                "error_description": f"client secret {sent} is wrong"}).encode()
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *a):
            pass

    server = HTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = Env(tmp_path, scale_fleet(f"http://127.0.0.1:{server.server_port}/token",
                                        "allow_loopback_http = true\n"))
        r = env.run("token", "scale", env={"UPLINK_SECRET_CS": "cs-value-91", "UPLINK_SECRET_AK": "ak-value-91"})
        assert r.code == 7, r.output
        assert "error: " in r.stderr and "invalid_client: client secret *** is wrong" in r.stderr
        assert "cs-value-91" not in r.output
        r = env.run("token", "scale", env={"UPLINK_SECRET_AK": "ak-value-91"})
        assert r.code == 4 and "secret 'cs' is not set" in r.stderr, r.output
    finally:
        server.shutdown()
