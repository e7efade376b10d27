"""`uplink provision --register`: ThingsBoard's MQTT device provisioning from the laptop,
against a small fake provisioning responder on mosquitto."""

from __future__ import annotations

import json
import threading

import paho.mqtt.client as mqtt
import pytest

from tests.host.uplink_helpers import Env

ISSUED = "issued-token-8812"


class FakeThingsBoard:
    """Answers /provision/request like ThingsBoard does (the broker here routes both ways)."""

    def __init__(self, broker, *, answer=None):
        self.requests: list[dict] = []
        self.answer = answer
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        ready = threading.Event()
        self.c.on_connect = lambda c, *a: c.subscribe("/provision/request", qos=1)
        self.c.on_subscribe = lambda *a: ready.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", broker.ports["mqtt"])
        self.c.loop_start()
        assert ready.wait(10)

    def _on_message(self, c, _u, msg):
        req = json.loads(msg.payload)
        self.requests.append(req)
        if self.answer is not None:
            reply = self.answer
        elif req.get("provisionDeviceKey") == "pk-1" and req.get("provisionDeviceSecret") == "ps-1":
            reply = {"status": "SUCCESS", "credentialsType": "ACCESS_TOKEN", "credentialsValue": ISSUED}
        else:
            reply = {"status": "NOT_FOUND"}
        c.publish("/provision/response", json.dumps(reply), qos=1)

    def stop(self):
        self.c.loop_stop()
        self.c.disconnect()


def tb_fleet(broker, scheme="mqtts") -> str:
    return f"""
[devices.gh.platform]
kind = "thingsboard"
url = "{broker.url(scheme)}"
ca = "{broker.pki.ca_pem}"
provision_key = "secret:pk"
provision_secret = "secret:ps"
"""


@pytest.mark.parametrize("scheme", ["mqtts", "wss"])
def test_register_stores_the_token_and_the_bundle_uses_it(tmp_path, broker, scheme):
    tb = FakeThingsBoard(broker)
    try:
        env = Env(tmp_path, tb_fleet(broker, scheme))
        env.env.update({"UPLINK_SECRET_PK": "pk-1", "UPLINK_SECRET_PS": "ps-1"})
        r = env.run("provision", "gh", "--register")
        assert r.code == 0, r.output
    finally:
        tb.stop()
    assert tb.requests == [{"deviceName": "gh", "provisionDeviceKey": "pk-1", "provisionDeviceSecret": "ps-1"}]
    assert json.loads(env.secrets_file.read_text()) == {"gh.token": ISSUED}
    cfg = json.loads((env.build / "devices" / "gh" / "config.json").read_text())
    assert cfg["platform"]["token"] == ISSUED and "provision_key" not in cfg["platform"]
    for leaked in (ISSUED, "pk-1", "ps-1"):
        assert leaked not in r.output


def test_register_into_the_fleets_token_reference(tmp_path, broker):
    tb = FakeThingsBoard(broker)
    try:
        env = Env(tmp_path, tb_fleet(broker) + 'token = "secret:gh_tok"\n')
        env.env.update({"UPLINK_SECRET_PK": "pk-1", "UPLINK_SECRET_PS": "ps-1"})
        r = env.run("provision", "gh", "--register")
        assert r.code == 0, r.output
    finally:
        tb.stop()
    assert json.loads(env.secrets_file.read_text()) == {"gh_tok": ISSUED}


@pytest.mark.parametrize("answer,expect", [
    ({"status": "NOT_FOUND"}, "NOT_FOUND"),
    ({"status": "FAILURE", "errorMsg": "Device with name gh already exists"}, "already exists"),
])
def test_register_refusals_are_explained(tmp_path, broker, answer, expect):
    tb = FakeThingsBoard(broker, answer=answer)
    try:
        env = Env(tmp_path, tb_fleet(broker))
        env.env.update({"UPLINK_SECRET_PK": "pk-1", "UPLINK_SECRET_PS": "ps-1"})
        r = env.run("provision", "gh", "--register")
    finally:
        tb.stop()
    assert r.code == 7
    assert expect in r.stderr
    assert not env.secrets_file.exists()


def test_register_needs_thingsboard_provision_keys(tmp_path):
    env = Env(tmp_path, '[devices.b.platform]\nkind = "blynk"\ntoken = "secret:t"\n')
    r = env.run("provision", "b", "--register", env={"UPLINK_SECRET_T": "x"})
    assert r.code == 1 and "--register needs a thingsboard device" in r.stderr
