"""End to end: the firmware gets its Weightron-style MQTT password from the token relay.

firmware (MicroPython, compiled .mpy under -X heapsize=96k)
  -> uplink.credentials (relay source, HTTPS checked against the relay CA as DER)
  -> host_tools.relay -> host_tools.oidc -> the loopback OIDC provider (client_credentials,
     then /access for the Application ID)
  -> uplink.mqtt over WSS to mosquitto, whose password file holds {application id: token}.

The token then expires; the test rotates the broker's password file to the new token and
drops the firmware's connection (an MQTT session takeover with the same client id). The
firmware reconnects with a fresh token from the relay, and every numbered QoS 1 reading
arrives at a paho subscriber.
"""

from __future__ import annotations

import subprocess
import threading
import time

import paho.mqtt.client as paho
import pytest

from tests.mpy_plugin import compile_firmware, micropython_bin, micropython_env, port_heap
from tests.oidc_provider import OIDCService
from tests.services import Mosquitto, mosquitto_bin

APP_ID = "app-5f1e2d"
DEVICE = "wt-1"
TOPIC = f"{APP_ID}/devices/{DEVICE}"
N = 60
LIFETIME = 15  # seconds: the provider's token lifetime
MIN_LIFE = 4

SCRIPT = r"""
import asyncio, os, sys
from uplink.mqtt import MQTTClient
from uplink.credentials import Credentials

creds = Credentials({"source": "relay", "url": os.getenv("RELAY_URL"), "ca": os.getenv("RELAY_CA_DER"),
                     "device_id": "wt-1", "key": os.getenv("RELAY_WT_KEY"),
                     "min_life_s": int(os.getenv("MIN_LIFE"))})

def status(ev, detail):
    # events and CONNACK reasons only: never a credential
    if ev in ("connected", "disconnected", "auth_error"):
        print("STATUS", ev, detail if ev == "auth_error" else "")

async def main():
    c = MQTTClient(os.getenv("MQTT_URL"), "wt-1", credentials=creds, ca=os.getenv("BROKER_CA_DER"),
                   keepalive=10)
    c.on_status = status
    await c.connect(retry=True)
    print("CONNECTED", creds.fetches)
    n = int(os.getenv("N"))
    gap = int(os.getenv("GAP_MS"))
    for i in range(n):
        await c.publish(os.getenv("TOPIC"), b'{"n":%d}' % i, qos=1, wait=False)
        print("SENT", i)
        await asyncio.sleep_ms(gap)
    await c.flush()
    print("DONE fetches=%d" % creds.fetches)
    await c.disconnect()

asyncio.run(main())
"""


class Board:
    """The MicroPython process and its console lines."""

    def __init__(self, tmp_path, fw, env):
        script = tmp_path / "device.py"
        script.write_text(SCRIPT)
        self.proc = subprocess.Popen(
            [micropython_bin(), "-X", f"heapsize={port_heap('96k')}", str(script)],
            env=micropython_env(fw, env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            cwd=str(tmp_path),
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            self.lines.append(raw.decode(errors="replace").rstrip())

    def wait(self, text: str, timeout: float = 30.0) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for ln in list(self.lines):
                if text in ln:
                    return ln
            if self.proc.poll() is not None:
                time.sleep(0.2)
                if not any(text in ln for ln in self.lines):
                    break
            time.sleep(0.05)
        raise AssertionError(f"no line with {text!r}; console:\n" + "\n".join(self.lines[-60:]))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def broker(tmp_path):
    """mosquitto with a password file from the start (the shared fixture allows anonymous
    clients, which would make a token check meaningless)."""
    if mosquitto_bin() is None:
        pytest.skip("mosquitto is not installed (make setup installs it when run as root)")
    b = Mosquitto(tmp_path / "broker", passwords={"observer": "observer-pw"}).start()
    yield b
    b.stop()


@pytest.fixture
def relay_service():
    svc = OIDCService(lifetime=LIFETIME, min_life_s=MIN_LIFE).start()
    yield svc
    svc.stop()


def _subscriber(broker, got: set, dup: list):
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="observer")
    c.username_pw_set("observer", "observer-pw")

    def on_message(_c, _u, msg):
        n = int(msg.payload.decode().split(":")[1].rstrip("}"))
        (dup.append(n) if n in got else got.add(n))

    c.on_message = on_message
    c.connect("127.0.0.1", broker.ports["mqtt"])
    c.subscribe(TOPIC, qos=1)
    c.loop_start()
    return c


def _kick(broker, password: str) -> None:
    """Drop the firmware's connection: connect with its client id (mosquitto takes the session
    over), then leave."""
    done = threading.Event()
    k = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=DEVICE)
    k.username_pw_set(APP_ID, password)
    k.on_connect = lambda *a: done.set()
    k.connect("127.0.0.1", broker.ports["mqtt"])
    k.loop_start()
    assert done.wait(10), "the kick connection was not accepted"
    k.disconnect()
    k.loop_stop()


def test_token_from_relay_rotates_and_no_reading_is_lost(broker, relay_service, tmp_path):
    svc = relay_service
    src = svc.sources[DEVICE]
    provider = svc.provider
    fw = compile_firmware(tmp_path / "mpy")  # before the token's clock starts ticking
    # the broker accepts only the current token (and our observer)
    first = svc.relay_thread.call(src.credential(MIN_LIFE))
    assert first.username == APP_ID
    broker.set_passwords({APP_ID: first.password, "observer": "observer-pw"})
    got: set = set()
    dup: list = []
    sub = _subscriber(broker, got, dup)
    env = dict(svc.env(), BROKER_CA_DER=str(broker.pki.ca_der), MQTT_URL=broker.url("wss"),
               TOPIC=TOPIC, N=str(N), GAP_MS="450", MIN_LIFE=str(MIN_LIFE))
    board = Board(tmp_path, fw, env)
    try:
        board.wait("CONNECTED 1", timeout=30)
        # the token the board holds expires; the provider's next token replaces it
        tok = src.cached
        time.sleep(max(0.0, tok.expires_at - time.time()) + 0.5)
        assert not provider.token_valid(first.password)
        sent_before = sum(1 for ln in board.lines if ln.startswith("SENT"))
        second = svc.relay_thread.call(src.credential(MIN_LIFE))
        assert second.password != first.password
        broker.set_passwords({APP_ID: second.password, "observer": "observer-pw"})
        _kick(broker, second.password)
        board.wait("DONE", timeout=N * 0.45 + 60)
        assert "DONE fetches=2" in board.wait("DONE")  # one token at start, one after expiry
        assert 0 < sent_before < N  # the rotation happened mid-stream
        end = time.monotonic() + 10
        while len(got) < N and time.monotonic() < end:
            time.sleep(0.1)
        assert sorted(got) == list(range(N)), f"missing: {sorted(set(range(N)) - got)}"
        console = "\n".join(board.lines)
        assert "auth_error" not in console  # the fresh token was there before it reconnected
        assert console.count("STATUS connected") >= 2
        for secret in (first.password, second.password, svc.keys[DEVICE]):
            assert secret not in console
        assert provider.token_requests == 2
    finally:
        board.stop()
        sub.loop_stop()
        sub.disconnect()


def test_stale_token_is_refused_by_the_broker(broker, relay_service):
    """Sanity of the rig: the broker really checks the token (so the test above means it)."""
    svc = relay_service
    cred = svc.relay_thread.call(svc.sources[DEVICE].credential(MIN_LIFE))
    broker.set_passwords({APP_ID: "some-other-token", "observer": "observer-pw"})
    refused = threading.Event()
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="probe")
    c.username_pw_set(APP_ID, cred.password)
    c.on_connect = lambda _c, _u, _f, rc, _p=None: refused.set() if rc.is_failure else None
    c.connect("127.0.0.1", broker.ports["mqtt"])
    c.loop_start()
    try:
        assert refused.wait(10)
    finally:
        c.loop_stop()
