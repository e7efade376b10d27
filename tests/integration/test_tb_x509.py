"""ThingsBoard X.509 device authentication (thingsboard.io/docs/user-guide/certificates/):
mutual TLS, the device's certificate and key on the board, no token. mosquitto with
require_certificate plays ThingsBoard's MQTT-over-TLS transport: it takes only a client
certificate signed by the CA it trusts, still valid."""

import json
import threading

import pytest

from tests.certs import client_cert
from tests.integration.hostboard import HostBoard
from tests.ledger import fw_identity
from tests.services import Mosquitto, mosquitto_bin

pytestmark = pytest.mark.skipif(mosquitto_bin() is None, reason="mosquitto not installed")


@pytest.fixture(scope="module")
def cert_broker(tmp_path_factory):
    b = Mosquitto(tmp_path_factory.mktemp("x509-broker"), client_certs=True).start()
    yield b
    b.stop()


def _board(tmp_path, broker, cert, name):
    cfg = {"device": {"name": name, "board": "host"}, "ntp": {"servers": []},
           "platform": {"kind": "thingsboard", "url": f"mqtts://localhost:{broker.ports['mqtts_cert']}",
                        "ca": "ca.der", "client_cert": "client.der", "client_key": "client_key.der"},
           "telemetry": {"interval_s": 1, "health": False}, "outbox": {"max_bytes": 100000}}
    files = {"ca.der": broker.pki.ca_der.read_bytes(), "client.der": cert.cert_der.read_bytes(),
             "client_key.der": cert.key_der.read_bytes()}
    return HostBoard(tmp_path / name, cfg, user_py="def read():\n    return {'t': 21.5}\n", files=files).start()


def _telemetry(broker):
    import paho.mqtt.client as mqtt

    got, ready = [], threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="x509-cloud")
    c.on_connect = lambda c, *a: c.subscribe("v1/devices/me/telemetry", 1)
    c.on_subscribe = lambda *a: ready.set()
    c.on_message = lambda c, u, m: got.append(m.payload)
    c.connect("127.0.0.1", broker.ports["mqtt"])
    c.loop_start()
    assert ready.wait(10)
    return c, got


def test_a_device_logs_in_with_its_client_certificate(cert_broker, tmp_path):
    cloud, got = _telemetry(cert_broker)
    cert = client_cert(cert_broker.pki, tmp_path / "pki", "x509-dev-1")
    board = _board(tmp_path, cert_broker, cert, "x509-dev-1")
    try:
        board.wait_for_line("pub: v1/devices/me/telemetry", timeout=30)
        readings: list[dict] = []
        for _ in range(100):
            readings = [d for d in map(json.loads, list(got)) if not fw_identity(d)]
            if readings:
                break
            threading.Event().wait(0.1)
        doc = readings[0]
        assert (doc["values"] if "ts" in doc else doc)["t"] == 21.5
        # the broker took the certificate's CN as the login: the certificate, not a token
        assert "u'x509-dev-1'" in cert_broker.log.read_text()
        assert "refused" not in board.console()
    finally:
        board.stop()
        cloud.loop_stop()


@pytest.mark.parametrize("which", ["other CA", "expired"])
def test_a_wrong_or_expired_client_certificate_is_refused_and_said_so(cert_broker, tmp_path, which):
    pki = cert_broker.wrong_pki if which == "other CA" else cert_broker.pki
    cert = client_cert(pki, tmp_path / "pki", "x509-bad", expired=which == "expired")
    board = _board(tmp_path, cert_broker, cert, "x509-bad")
    try:
        line = board.wait_for_line("refused our credentials", timeout=30)
        assert "client certificate client.der" in line and "expired, or not signed by a CA it trusts" in line
        assert "pub: v1/devices/me/telemetry" not in board.console()
    finally:
        board.stop()
