"""Chaos: long outages. The whole firmware on the host board behind the fault proxy.

- the outbox fills during an outage: the oldest readings are dropped (whole segments, as
  outbox.max_bytes says), the drop count reaches the cloud in the health telemetry
  (`dropped`), and the device goes on working when the link returns: everything after the
  dropped block arrives.
- credentials rejected after a rotation (the broker's password file changes, the device is
  kicked): the device backs off instead of hammering the broker (CONNECT attempts counted
  at the proxy), reports it (console line, `auth_failures` in health), and recovers when
  valid credentials return, without losing a reading.
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


def test_outbox_full_drops_oldest_reports_and_recovers(tmp_path, capsys):
    broker = Mosquitto(tmp_path / "broker").start()
    obs = Observer(broker.ports["mqtt"], [TOPIC])
    proxy = FaultProxy(broker.ports["mqtt"], seed=30)
    cfg = app_config(proxy.port, interval_ms=20, health=True)
    cfg["outbox"] = {"max_bytes": 4096}  # ~30 readings with health: an outage of a few seconds fills it
    board = HostBoard(tmp_path / "board", cfg, user_py=SEQ_USER).start()
    try:
        assert obs.wait(lambda: len(obs.keys()) >= 50), board.console()
        proxy.refuse(True)
        proxy.cut_all()
        before = max(k[1] for k in obs.keys())
        time.sleep(4)  # ~200 readings into a ~30-reading outbox
        proxy.refuse(False)
        assert obs.wait(lambda: max(k[1] for k in obs.keys()) >= before + 400, 40), board.console()
        board.stop()
        obs.quiet(0.5)
        waiting, dropped = outbox_readings(board.state, max_bytes=4096)
        got = {n for _, n in set(obs.keys()) | set(waiting)}
        gone = sorted(set(range(1, max(got) + 1)) - got)
        reported = max(v.get("dropped", 0) for v in obs.readings())
        led = Ledger.of(obs.keys(), waiting, dropped={(1, n) for n in gone})
        led.extra = {"dropped_by_outbox": dropped, "dropped_reported": reported, "gone": len(gone),
                     "gone_range": f"{gone[0]}..{gone[-1]}" if gone else "-"}
        show(capsys, led.table("outbox full in an outage"))
        assert dropped > 0, "the outage did not fill the outbox: the test proves nothing"
        # what is gone is one block of the oldest readings of the outage, nothing after it
        assert gone == list(range(gone[0], gone[-1] + 1)), f"not one block: {gone}"
        assert gone[0] > before - 40, (before, gone[0])  # in flight at the cut, or later
        # a record in flight when its segment was dropped can still arrive: gone <= dropped
        assert 0 < len(gone) <= dropped
        assert reported > 0, "the drop count never reached the cloud"
        assert reported <= dropped
    finally:
        board.stop()
        proxy.close()
        obs.close()
        broker.stop()


# user.py for the rotation test: SEQ_USER, with the client's refused-login backoff scaled
# from 60 s to 3 s so the test takes seconds (the doubling and the jitter are the firmware's).
# 3 s stays well apart from the 0.5 s backoff of other errors: a refusal treated as an
# ordinary error would make 5 or more attempts in the 8 s counted below, the refused-login
# backoff at most 3.
AUTH_USER = SEQ_USER + """
import uplink.mqtt
uplink.mqtt.MQTTClient.auth_backoff_ms = 3000
"""


def test_credentials_rotated_backs_off_reports_and_recovers(tmp_path, capsys):
    broker = Mosquitto(tmp_path / "broker", passwords={"dev": "pw-1", "cloud": "c"}).start()
    obs = Observer(broker.ports["mqtt"], [TOPIC], auth=("cloud", "c"))
    proxy = FaultProxy(broker.ports["mqtt"], seed=31)
    cfg = app_config(proxy.port, interval_ms=50, health=True)
    cfg["platform"]["credentials"] = {"source": "static", "username": "dev", "password": "pw-1"}
    board = HostBoard(tmp_path / "board", cfg, user_py=AUTH_USER).start()
    try:
        assert obs.wait(lambda: len(obs.keys()) >= 40), board.console()
        broker.set_passwords({"dev": "pw-2", "cloud": "c"})  # rotated: the device's password is stale
        c0 = proxy.connections
        proxy.cut_all()
        board.wait_for_line("broker refused our credentials", 10)
        t0 = time.monotonic()
        time.sleep(8)
        attempts = proxy.connections - c0
        rate = attempts / (time.monotonic() - t0)
        before = max(k[1] for k in obs.keys())
        broker.set_passwords({"dev": "pw-1", "cloud": "c"})  # valid credentials are back
        t1 = time.monotonic()
        assert obs.wait(lambda: max(k[1] for k in obs.keys()) > before + 50, 40), board.console()
        recovered_s = time.monotonic() - t1
        board.stop()
        obs.quiet(0.5)
        waiting, dropped = outbox_readings(board.state)
        led = Ledger.of(obs.keys(), waiting)
        reported = max(v.get("auth_failures", 0) for v in obs.readings())
        led.extra = {"connects_in_8s": attempts, "per_s": round(rate, 2), "auth_failures": reported,
                     "recovered_s": round(recovered_s, 1)}
        show(capsys, led.table("credentials rotated"))
        assert 1 <= attempts <= 3, f"{attempts} CONNECT attempts in 8 s: hammering the broker"
        assert reported >= 1, "auth_failures never reached the cloud"
        assert led.lost == 0, f"lost readings: {led.missing}"
        assert dropped == 0
    finally:
        board.stop()
        proxy.close()
        obs.close()
        broker.stop()


def test_stalled_link_is_detected_by_keepalive_none_lost(tmp_path, capsys):
    """The link goes silent without a FIN or RST (a router died): the device must find out by
    its keepalive, reconnect and resend. A slow link (proxy delay) comes first."""
    broker = Mosquitto(tmp_path / "broker").start()
    obs = Observer(broker.ports["mqtt"], [TOPIC])
    proxy = FaultProxy(broker.ports["mqtt"], seed=32)
    cfg = app_config(proxy.port, interval_ms=20)
    cfg["platform"]["keepalive"] = 2
    board = HostBoard(tmp_path / "board", cfg, user_py=SEQ_USER).start()
    try:
        assert obs.wait(lambda: len(obs.keys()) >= 50), board.console()
        proxy.delay(0.05)  # a slow link: every chunk 50 ms late
        n = len(set(obs.keys()))
        assert obs.wait(lambda: len(set(obs.keys())) >= n + 50), board.console()
        proxy.delay(0)
        c0 = proxy.connections
        proxy.stall(True)
        before = max(k[1] for k in obs.keys())
        board.wait_for_line("within keepalive", 15)
        proxy.stall(False)
        assert obs.wait(lambda: max(k[1] for k in obs.keys()) >= before + 300, 30), board.console()
        board.stop()
        obs.quiet(0.5)
        waiting, dropped = outbox_readings(board.state)
        led = Ledger.of(obs.keys(), waiting)
        led.extra = {"reconnects_after_stall": proxy.connections - c0, "ooo": led.out_of_order}
        show(capsys, led.table("slow link, then stalled"))
        assert proxy.connections > c0, "the device never reconnected after the stall"
        assert led.lost == 0, f"lost readings: {led.missing}"
        assert dropped == 0
    finally:
        board.stop()
        proxy.close()
        obs.close()
        broker.stop()
