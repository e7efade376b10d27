"""The whole firmware (app + Weightron adapter) on the host board, its MQTT password from the
token relay: the token expires, the broker's password file rotates, the connection drops,
the app reconnects with a fresh token and every reading arrives, in order.

(test_token_relay_e2e.py proves the same with a bare MQTT client script; this one proves the
app's wiring: platform.credentials = relay -> uplink.credentials -> the adapter's CONNECT.)
"""

from __future__ import annotations

import json
import threading
import time

import paho.mqtt.client as paho
import pytest

from tests.integration.hostboard import HostBoard
from tests.oidc_provider import OIDCService
from tests.services import Mosquitto, mosquitto_bin

pytestmark = pytest.mark.skipif(mosquitto_bin() is None, reason="mosquitto not installed")

APP_ID = "app-5f1e2d"
DEVICE = "wt-1"
TOPIC = f"{APP_ID}/devices/{DEVICE}"
LIFETIME = 20
MIN_LIFE = 4

SEQ_USER = """
_n = [0]
def read():
    _n[0] += 1
    return {"seq": _n[0]}
"""


class Cloud:
    def __init__(self, port: int):
        self.seqs: list[int] = []
        self.lock = threading.Lock()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="cloud")
        self.c.username_pw_set("observer", "observer-pw")
        self.c.on_connect = lambda c, *a: c.subscribe(TOPIC, 1)
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on_message(self, c, u, msg):
        data = json.loads(msg.payload)
        with self.lock:
            self.seqs.append(data["$native"]["seq"])

    def snapshot(self) -> list[int]:
        with self.lock:
            return list(self.seqs)

    def wait(self, pred, timeout=40.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred(self.snapshot()):
                return True
            time.sleep(0.05)
        return False

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def kick(port: int, password: str) -> None:
    done = threading.Event()
    k = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=DEVICE)
    k.username_pw_set(APP_ID, password)
    k.on_connect = lambda c, u, f, rc, p=None: done.set() if not rc.is_failure else None
    k.connect("127.0.0.1", port)
    k.loop_start()
    assert done.wait(10), "the kick connection was not accepted"
    k.disconnect()
    k.loop_stop()


def test_app_reconnects_with_a_fresh_relay_token_and_loses_nothing(tmp_path):
    svc = OIDCService(lifetime=LIFETIME, min_life_s=MIN_LIFE).start()
    broker = Mosquitto(tmp_path / "broker", passwords={"observer": "observer-pw"}).start()
    cloud = board = None
    try:
        src = svc.sources[DEVICE]
        first = svc.relay_thread.call(src.credential(MIN_LIFE))
        broker.set_passwords({APP_ID: first.password, "observer": "observer-pw"})
        cloud = Cloud(broker.ports["mqtt"])
        config = {
            "device": {"name": DEVICE, "board": "host"},
            "ntp": {"servers": []},
            "platform": {
                "kind": "weightron", "url": broker.url("wss"), "ca": "broker_ca.der",
                "application_id": APP_ID, "device_id": DEVICE, "keepalive": 10, "publish": True,
                "credentials": {"source": "relay", "url": svc.url, "ca": "relay_ca.der",
                                "device_id": DEVICE, "key": svc.keys[DEVICE],
                                "min_life_s": MIN_LIFE},
            },
            "telemetry": {"interval_ms": 300, "health": False},
            "outbox": {"max_bytes": 200000},
        }
        files = {"broker_ca.der": broker.pki.ca_der.read_bytes(),
                 "relay_ca.der": svc.pki.ca_der.read_bytes()}
        board = HostBoard(tmp_path / "board", config, user_py=SEQ_USER, files=files).start()
        assert cloud.wait(lambda s: len(s) >= 3), "no readings; console:\n" + board.console()

        # the token the app connected with expires; the provider's next one replaces it
        time.sleep(max(0.0, first.expires_at - time.time()) + 0.5)
        before = max(cloud.snapshot())
        second = svc.relay_thread.call(src.credential(MIN_LIFE))
        assert second.password != first.password
        broker.set_passwords({APP_ID: second.password, "observer": "observer-pw"})
        kick(broker.ports["mqtt"], second.password)

        assert cloud.wait(lambda s: max(s) >= before + 15), (
            "readings stopped after the rotation; console:\n" + board.console())
        seqs = cloud.snapshot()
        top = max(seqs)
        assert sorted(set(seqs)) == list(range(1, top + 1)), "a reading is missing"
        console = board.console()
        assert "refused our credentials" not in console and "auth_error" not in console
        # the TLS context cache holds the relay's CA (a path) and the broker's (DER bytes)
        assert "Comparison between bytes and str" not in console
        for secret in (first.password, second.password, svc.keys[DEVICE]):
            assert secret not in console
        assert svc.provider.token_requests == 2
    finally:
        if board is not None:
            board.stop()
        if cloud is not None:
            cloud.close()
        broker.stop()
        svc.stop()
