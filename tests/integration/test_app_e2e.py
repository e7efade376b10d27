"""The whole firmware on the host board against mosquitto: readings survive broker outages,
commands come back with replies, a broken config stops the app in safe mode."""

import json
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from tests.integration.hostboard import HostBoard
from tests.ledger import fw_identity
from tests.services import Mosquitto, mosquitto_bin

pytestmark = pytest.mark.skipif(mosquitto_bin() is None, reason="mosquitto not installed")

SEQ_USER = """
_n = [0]
def read():
    _n[0] += 1
    return {"seq": _n[0]}
def handle(cmd):
    if cmd.name == "echo":
        return {"echo": cmd.params}
    raise ValueError("unknown command")
"""


def tb_config(port, **telemetry):
    return {
        "device": {"name": "e2e", "board": "host"},
        "ntp": {"servers": []},
        "platform": {"kind": "thingsboard", "url": f"mqtt://localhost:{port}", "token": "t0k3n"},
        "telemetry": {"interval_s": 1, "health": False, **telemetry},
        "outbox": {"max_bytes": 200000},
    }


class Cloud:
    """A paho subscriber with a persistent session: it misses nothing across broker restarts."""

    def __init__(self, port, topics):
        self.msgs = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cloud", clean_session=False)
        self.c.on_connect = lambda c, *a: c.subscribe([(t, 1) for t in topics])
        self.c.on_message = self._on_message
        self.c.reconnect_delay_set(0.1, 0.5)
        self.c.connect("localhost", port)
        self.c.loop_start()

    def _on_message(self, c, u, msg):
        with self.lock:
            self.msgs.append((msg.topic, msg.payload))

    def readings(self):
        out = []
        with self.lock:
            msgs = list(self.msgs)
        for topic, payload in msgs:
            if topic.endswith("/telemetry"):
                data = json.loads(payload)
                out += [r for r in (data if isinstance(data, list) else [data]) if not fw_identity(r)]
        return out

    def wait(self, pred, timeout=30):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return True
            time.sleep(0.05)
        return False

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def seqs(readings):
    return [r["values"]["seq"] for r in readings]


def test_readings_survive_two_broker_restarts_in_order(tmp_path):
    broker = Mosquitto(tmp_path / "broker", persistence=True).start()
    cloud = Cloud(broker.ports["mqtt"], ["v1/devices/me/telemetry"])
    board = HostBoard(tmp_path / "board", tb_config(broker.ports["mqtt"], interval_ms=20), user_py=SEQ_USER).start()
    try:
        for outage in range(2):
            want = 100 * (outage + 1)
            assert cloud.wait(lambda w=want: len(cloud.readings()) >= w), board.console()
            broker.stop()
            time.sleep(1.5)  # the board keeps measuring into its outbox meanwhile
            broker.start()
        assert cloud.wait(lambda: len(set(seqs(cloud.readings()))) >= 300), board.console()
        got = seqs(cloud.readings())
        last = max(got)
        missing = sorted(set(range(1, last + 1)) - set(got))
        assert not missing, f"lost readings: {missing[:20]} ({len(missing)} in all)"
        first_seen = list(dict.fromkeys(got))
        assert first_seen == sorted(first_seen), "readings arrived out of order"
        print(f"\nledger: sent>={last} delivered={len(set(got))} duplicates={len(got) - len(set(got))} lost=0")
    finally:
        board.stop()
        cloud.close()
        broker.stop()


def test_rpc_reaches_user_handler_and_reply_arrives(broker, tmp_path):
    cloud = Cloud(broker.ports["mqtt"], ["v1/devices/me/rpc/response/+", "v1/devices/me/telemetry"])
    board = HostBoard(tmp_path / "board", tb_config(broker.ports["mqtt"]), user_py=SEQ_USER).start()
    try:
        assert cloud.wait(lambda: cloud.readings()), board.console()
        cloud.c.publish("v1/devices/me/rpc/request/42", json.dumps({"method": "echo", "params": {"x": 1}}), qos=1)
        assert cloud.wait(lambda: any(t.endswith("/response/42") for t, _ in cloud.msgs)), board.console()
        reply = [json.loads(p) for t, p in cloud.msgs if t.endswith("/response/42")][0]
        assert reply == {"echo": {"x": 1}}
        # a malformed downlink is reported and ignored; the device keeps working
        cloud.c.publish("v1/devices/me/rpc/request/43", b"{not json", qos=1)
        n = len(cloud.readings())
        assert cloud.wait(lambda: len(cloud.readings()) > n + 1), board.console()
        assert board.proc.poll() is None
    finally:
        board.stop()
        cloud.close()


def test_broken_config_enters_safe_mode(tmp_path):
    cfg = tb_config(1883)
    cfg["telemetry"]["intervall_s"] = 5
    cfg["device"]["safe_mode_retry_s"] = 1
    board = HostBoard(tmp_path / "board", cfg).start()
    assert board.proc.wait(20) == 75  # safe mode waits, then resets for another try
    line = board.wait_for_line("safe-mode")
    assert "telemetry.intervall_s" in line and "did you mean 'interval_s'" in line
    assert "SAFE MODE" in board.console()
    assert (tmp_path / "board" / "safemode.txt").exists()
