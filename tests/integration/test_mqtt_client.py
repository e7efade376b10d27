"""The firmware's MQTT client in MicroPython against a real mosquitto, counted by a paho-mqtt
subscriber on the host: pipelined QoS 1 delivery, a broker killed and restarted mid-stream,
refused credentials, credentials fetched again before every reconnect."""

from __future__ import annotations

import signal
import threading
import time

import paho.mqtt.client as paho
import pytest

from tests.integration import mpy
from tests.services import Mosquitto, mosquitto_bin

pytestmark = pytest.mark.skipif(mosquitto_bin() is None, reason="mosquitto is not installed")


class Counter:
    """A paho subscriber collecting distinct payloads on one topic (QoS 1)."""

    def __init__(self, broker: Mosquitto, topic: str, auth: tuple | None = None):
        self.got: set[bytes] = set()
        self.total = 0
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.gone = threading.Event()  # paho read everything up to the broker's end
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"counter-{time.monotonic_ns()}")
        if auth:
            c.username_pw_set(*auth)
        c.on_message = self._on_message
        c.on_subscribe = lambda *a: self.subscribed.set()
        c.on_disconnect = lambda *a: self.gone.set()
        c.on_connect = lambda cl, *a: cl.subscribe(topic, qos=1)
        c.connect("127.0.0.1", broker.ports["mqtt"])
        c.loop_start()
        self.client = c
        assert self.subscribed.wait(10), "paho subscriber got no SUBACK"

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.got.add(msg.payload)
            self.total += 1

    def wait_for(self, n: int, timeout: float = 30.0) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end and len(self.got) < n:
            time.sleep(0.05)
        return len(self.got)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


PIPELINE = """
import asyncio, os
from uplink.mqtt import MQTTClient

async def main():
    c = MQTTClient(os.getenv("URL"), "pipeline", ca=os.getenv("CA"))
    await c.connect()
    acks = []
    c.on_ack = acks.append
    for i in range(2000):
        await c.publish("count/pipe", b"%d" % i, qos=1, wait=False)
    await c.flush()
    print("done", len(acks))
    await c.disconnect()

asyncio.run(main())
"""


@pytest.mark.parametrize("scheme", ["mqtt", "wss"])
def test_2000_pipelined_qos1_publishes_all_arrive(broker, scheme):
    counter = Counter(broker, "count/pipe")
    p = mpy.start(PIPELINE, env={"URL": broker.url(scheme), "CA": str(broker.pki.ca_der)})
    try:
        assert "done 2000" in p.expect("done", timeout=60)
        assert p.wait(10) == 0, p.output
        assert counter.wait_for(2000) == 2000
        assert counter.got == {b"%d" % i for i in range(2000)}
    finally:
        p.kill()
        counter.stop()


KILLED = """
import asyncio, os
from uplink.mqtt import MQTTClient

GATE = os.getenv("GATE")
calls = 0

async def credentials():
    # the test holds us here while the broker is down; the file has the current password
    global calls
    calls += 1
    print("credentials", calls)
    while True:
        try:
            with open(GATE) as f:
                pw = f.read().strip()
            if pw:
                return ("dev", pw)
        except OSError:
            pass
        await asyncio.sleep_ms(50)

async def main():
    c = MQTTClient(os.getenv("URL"), "killed", credentials=credentials, ca=os.getenv("CA"),
                   window=16)
    c.backoff_min_ms = 100
    c.on_status = lambda e, d: print("status", e)
    await c.connect()
    for i in range(600):
        await c.publish("count/killed", b"%d" % i, qos=1, wait=False)
        if i % 10 == 9:
            await asyncio.sleep_ms(20)  # a steady stream, so the kill lands in the middle
        if i == 150:
            print("mid-stream")
    await c.flush()
    print("done", calls)
    await c.disconnect()

asyncio.run(main())
"""


@pytest.mark.parametrize("scheme", ["mqtt", "mqtts"])
def test_broker_killed_mid_stream_every_qos1_message_arrives(tmp_path, scheme):
    b = Mosquitto(tmp_path / "broker", passwords={"dev": "pw-1", "counter": "c"}).start()
    gate = tmp_path / "gate"
    gate.write_text("pw-1")
    counter = Counter(b, "count/killed", ("counter", "c"))
    env = {"URL": b.url(scheme), "CA": str(b.pki.ca_der), "GATE": str(gate)}
    p = mpy.start(KILLED, env=env)
    counter2 = None
    try:
        p.expect("mid-stream", timeout=30)
        gate.write_text("")  # hold the client's next connect in credentials()
        # Freeze the client wherever it is in its publish loop and let the broker finish what
        # it was given, then kill the broker: what it acknowledged it has also forwarded (a
        # non-persistent broker killed between the two loses messages no client can save).
        p.proc.send_signal(signal.SIGSTOP)
        time.sleep(0.5)
        b.kill()
        p.proc.send_signal(signal.SIGCONT)
        p.expect("status disconnected", timeout=10)
        p.expect("credentials 2", timeout=10)
        assert counter.gone.wait(10)
        counter.stop()
        # the broker comes back with a new password: only fresh credentials get in
        b.passwords = {"dev": "pw-2", "counter": "c"}
        b.start()
        counter2 = Counter(b, "count/killed", ("counter", "c"))
        gate.write_text("pw-2")
        line = p.expect("done", timeout=60)
        assert p.wait(10) == 0, p.output
        assert int(line.split()[1]) >= 2  # credentials() ran again before the reconnect
        counter2.wait_for(600 - len(counter.got), timeout=20)
        missing = {b"%d" % i for i in range(600)} - counter.got - counter2.got
        assert not missing, f"{len(missing)} lost: {sorted(missing)[:20]}\n{p.output}"
        assert p.output.count("status connected") >= 2
    finally:
        p.kill()
        if counter2:
            counter2.stop()
        b.stop()


AUTH = """
import asyncio, os
from uplink.mqtt import MQTTClient, MQTTAuthError

async def main():
    c = MQTTClient(os.getenv("URL"), "auth", user="dev", password="not-the-password")
    try:
        await c.connect()
        print("connected?!")
    except MQTTAuthError as e:
        print("refused", type(e).__name__, e.code, e)
    c.on_status = lambda e, d: print("status", e, d)

    async def later():  # the test's sentinel: a second on this process's own clock
        await asyncio.sleep(1)
        print("a second later")

    asyncio.create_task(later())
    await c.connect(retry=True)  # refused again: waits long before trying once more

asyncio.run(main())
"""


def test_wrong_password_is_mqtt_auth_error_and_backs_off_long(tmp_path):
    b = Mosquitto(tmp_path / "broker", passwords={"dev": "right"}).start()
    p = mpy.start(AUTH, env={"URL": b.url("mqtt")})
    try:
        line = p.expect("refused", timeout=10)
        assert "MQTTAuthError" in line and "CONNACK" in line
        assert " 5 " in line or " 4 " in line
        p.expect("status auth_error", timeout=10)
        backoff = float(p.expect("status backoff", timeout=10).split()[-1])
        assert backoff >= 30, backoff  # never hammer a broker with bad credentials
        # a retry within the second would have printed its status before this (one stdout)
        p.expect("a second later", timeout=10)
        assert p.output.count("status auth_error") == 1
        assert "not-the-password" not in p.output  # secrets are never printed
    finally:
        p.kill()
        b.stop()
