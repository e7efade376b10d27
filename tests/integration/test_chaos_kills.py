"""Chaos: SIGKILL. The whole firmware on the host board (ThingsBoard profile, a reading every
20 ms) behind the fault proxy, mosquitto behind that.

- the broker SIGKILLed and restarted three times: none lost. A SIGKILLed mosquitto forgets
  whatever it held in memory, including QoS 1 messages it acknowledged but had not yet
  handed to the observer, which would look like a loss the device did not cause. So the
  observer is kept sound: the proxy holds the device's traffic (stall), the observer drains
  what the broker already has, the broker is killed with the device's publishes in flight,
  and the proxy passes traffic again only once the observer has resubscribed.
- the firmware SIGKILLed twice and restarted: after each kill the outbox is read with the
  firmware's own Outbox; every reading it held, and every reading before it, is delivered.
"""

import time

import pytest

from tests.faultproxy import FaultProxy
from tests.integration.hostboard import HostBoard
from tests.integration.test_chaos_cuts import app_config
from tests.ledger import SEQ_USER, Ledger, Observer, outbox_readings, show
from tests.services import Mosquitto, mosquitto_bin

pytestmark = pytest.mark.skipif(mosquitto_bin() is None, reason="mosquitto not installed")

TOPIC = "v1/devices/me/telemetry"


def test_broker_sigkilled_three_times_none_lost(tmp_path, capsys):
    broker = Mosquitto(tmp_path / "broker").start()
    obs = Observer(broker.ports["mqtt"], [TOPIC])
    proxy = FaultProxy(broker.ports["mqtt"], seed=20)
    board = HostBoard(tmp_path / "board", app_config(proxy.port, interval_ms=20), user_py=SEQ_USER).start()
    try:
        for kill in range(3):
            want = 150 * (kill + 1)
            assert obs.wait(lambda w=want: len(set(obs.keys())) >= w), board.console()
            proxy.stall(True)  # the device's next publishes wait in the proxy, unacknowledged
            obs.quiet(0.5)
            n = obs.subscribed
            broker.kill()
            time.sleep(1.0)  # the device keeps measuring into its outbox
            broker.start()
            assert obs.wait(lambda n=n: obs.subscribed > n, 20), "observer did not come back"
            proxy.stall(False)
        top = max(k[1] for k in obs.keys())
        assert obs.wait(lambda: len(set(obs.keys())) >= top + 100, 30), board.console()
        board.stop()
        obs.quiet(0.5)
        waiting, dropped = outbox_readings(board.state)
        led = Ledger.of(obs.keys(), waiting)
        led.extra = {"broker_kills": 3, "reconnects": proxy.connections - 1, "ooo": led.out_of_order,
                     "publish_errors": board.console().count("E publish")}
        show(capsys, led.table("broker SIGKILL x3"))
        assert led.lost == 0, f"lost readings: {led.missing}"
        assert dropped == 0
        # first arrivals in the order measured: a reconnect resends the oldest first
        assert led.out_of_order == 0, "readings overtook older ones after a reconnect"
        assert "disconnected" in board.console()  # the device did see the broker go
    finally:
        board.stop()
        proxy.close()
        obs.close()
        broker.stop()


def test_firmware_sigkilled_twice_every_accepted_reading_delivered(tmp_path, capsys):
    broker = Mosquitto(tmp_path / "broker").start()
    obs = Observer(broker.ports["mqtt"], [TOPIC])
    proxy = FaultProxy(broker.ports["mqtt"], seed=21)
    board = HostBoard(tmp_path / "board", app_config(proxy.port, interval_ms=20), user_py=SEQ_USER).start()
    held = set()  # readings in the outbox at the moment of a kill
    try:
        for boot in (1, 2):
            assert obs.wait(lambda b=boot: sum(1 for k in set(obs.keys()) if k[0] == b) >= 100), board.console()
            # kill with a backlog: the proxy holds the traffic so the outbox has readings waiting
            proxy.stall(True)
            time.sleep(0.5)
            board.kill()
            proxy.stall(False)
            proxy.cut_all()
            waiting, _ = outbox_readings(board.state)
            assert waiting, "no backlog at the kill: the test proves nothing"
            held |= set(waiting)
            board.start()
        assert obs.wait(lambda: sum(1 for k in set(obs.keys()) if k[0] == 3) >= 100), board.console()
        board.stop()
        obs.quiet(0.5)
        waiting, dropped = outbox_readings(board.state)
        got = set(obs.keys())
        led = Ledger.of(obs.keys(), waiting)
        led.extra = {"firmware_kills": 2, "held_at_kills": len(held), "ooo": led.out_of_order,
                     "publish_errors": board.console().count("E publish")}
        show(capsys, led.table("firmware SIGKILL x2"))
        assert not held - got, f"readings the outbox held at a kill never arrived: {sorted(held - got)[:20]}"
        assert led.lost == 0, f"lost readings: {led.missing}"
        assert dropped == 0
        assert {b for b, _ in got} == {1, 2, 3}
    finally:
        board.stop()
        proxy.close()
        obs.close()
        broker.stop()
