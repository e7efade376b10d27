"""ThingsBoard X.509 in the fleet file: the certificate a file, its key a secret reference;
provision renders both as DER (the key 0600), validate checks they belong together and that
the certificate is valid now (host_tools/x509.py)."""

from __future__ import annotations

import base64
import json
import stat

import pytest

from tests.certs import client_cert, make_pki
from tests.host.uplink_helpers import Env


def fleet_text(ca: str, cert: str) -> str:
    return f"""
[devices.gh.platform]
kind = "thingsboard"
url = "mqtts://tb.example.com:8883"
ca = "{ca}"
client_cert = "{cert}"
client_key = "secret:gh_key"
"""


@pytest.fixture
def env(tmp_path):
    pki = make_pki(tmp_path / "pki")
    cc = client_cert(pki, tmp_path / "client", "gh")
    e = Env(tmp_path / "fleet", fleet_text(str(pki.ca_pem), str(cc.cert_pem)))
    e.env["UPLINK_SECRET_GH_KEY"] = cc.key_pem.read_text()  # PEM, several lines (--from-env)
    e.pki, e.cc = pki, cc  # type: ignore[attr-defined]
    return e


def test_provision_renders_the_certificate_and_key_as_der(env):
    r = env.run("provision", "gh")
    assert r.code == 0, r.output
    d = env.build / "devices" / "gh"
    p = json.loads((d / "config.json").read_text())["platform"]
    assert p["client_cert"] == "client.der" and p["client_key"] == "client_key.der" and "token" not in p
    assert (d / "client.der").read_bytes() == env.cc.cert_der.read_bytes()
    assert (d / "client_key.der").read_bytes() == env.cc.key_der.read_bytes()
    assert stat.S_IMODE((d / "client_key.der").stat().st_mode) == 0o600
    assert stat.S_IMODE((d / "client.der").stat().st_mode) == 0o644
    assert "BEGIN PRIVATE KEY" not in r.output
    # the key as one line, the base64 of its DER (`uplink secrets set` reads one line)
    env.env["UPLINK_SECRET_GH_KEY"] = base64.b64encode(env.cc.key_der.read_bytes()).decode()
    assert env.run("provision", "gh").code == 0
    assert (d / "client_key.der").read_bytes() == env.cc.key_der.read_bytes()


def test_a_key_in_the_fleet_file_itself_is_refused(env):
    env.write_fleet(fleet_text(str(env.pki.ca_pem), str(env.cc.cert_pem)).replace('"secret:gh_key"', '"MHcCAQEE"'))
    r = env.run("validate")
    assert r.code != 0 and "client_key" in r.stderr


def test_validate_checks_the_key_is_the_certificates_and_the_date(env, tmp_path):
    assert env.run("validate").code == 0
    other = client_cert(env.pki, tmp_path / "other", "other")
    env.env["UPLINK_SECRET_GH_KEY"] = other.key_pem.read_text()
    r = env.run("validate")
    assert r.code != 0 and "client_key is not the private key of client_cert" in r.stderr
    old = client_cert(env.pki, tmp_path / "old", "old", expired=True)
    env.write_fleet(fleet_text(str(env.pki.ca_pem), str(old.cert_pem)))
    env.env["UPLINK_SECRET_GH_KEY"] = old.key_pem.read_text()
    r = env.run("validate")
    assert r.code != 0 and "client_cert expired on" in r.stderr and "device 'gh'" in r.stderr
    env.env["UPLINK_SECRET_GH_KEY"] = "not a key"
    env.write_fleet(fleet_text(str(env.pki.ca_pem), str(env.cc.cert_pem)))
    r = env.run("validate")
    assert r.code != 0 and "platform.client_key: not a private key" in r.stderr
