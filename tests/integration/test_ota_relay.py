"""`uplink ota` for a relay-connected device end to end: the whole firmware (app + Weightron
adapter, its MQTT password from the token relay) on the host board (ESP32 model); a bundle
left in the relay's ota_dir, as `uplink ota DEVICE` leaves it, is fetched at the next boot
over the relay's signed GET /v1/ota, installed, tried and kept; a bundle that crashes rolls
back and is not fetched again."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from tests.integration.hostboard import HostBoard
from tests.integration.test_ota_tb import TRIAL_HEAP, USER, Supervised, make_bundle
from tests.oidc_provider import OIDCService
from tests.services import Mosquitto, mosquitto_bin

pytestmark = pytest.mark.skipif(mosquitto_bin() is None, reason="mosquitto not installed")

APP_ID = "app-5f1e2d"
DEVICE = "wt-1"


def offer(ota_dir, bundle) -> None:
    """What `uplink ota DEVICE --bundle` leaves for the relay (host_tools/cli.py ota_cmd)."""
    ota_dir.mkdir(exist_ok=True)
    shutil.copyfile(bundle.with_name(bundle.name + ".sha256"), ota_dir / f"{DEVICE}.uplb.sha256")
    shutil.copyfile(bundle, ota_dir / f"{DEVICE}.uplb")


def wait_line(board, text, timeout=120.0, after=0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if any(text in ln for ln in board.lines[after:]):
            return
        time.sleep(0.1)
    raise AssertionError(f"no console line {text!r}:\n" + board.console())


def test_relay_serves_the_bundle_at_boot_then_trial_commit_and_a_crash_rolls_back(tmp_path):
    ota_dir = tmp_path / "ota"
    svc = OIDCService(ota_dir=ota_dir).start()
    broker = Mosquitto(tmp_path / "broker", passwords={"observer": "observer-pw"}).start()
    run = None
    try:
        tok = svc.relay_thread.call(svc.sources[DEVICE].credential(60))
        broker.set_passwords({APP_ID: tok.password, "observer": "observer-pw"})
        config = {
            "device": {"name": DEVICE, "board": "host"},
            "ntp": {"servers": []},
            "platform": {
                "kind": "weightron", "url": broker.url("mqtt"), "application_id": APP_ID, "device_id": DEVICE,
                "publish": True,
                "credentials": {"source": "relay", "url": svc.url, "ca": "relay_ca.der", "device_id": DEVICE,
                                "key": svc.keys[DEVICE]},
            },
            "telemetry": {"interval_s": 1, "health": False},
            "outbox": {"max_bytes": 100000},
        }
        board = HostBoard(tmp_path / "board", config, user_py=USER % ("v1", "1"),
                          files={"relay_ca.der": svc.pki.ca_der.read_bytes()},
                          heapsize=TRIAL_HEAP)
        run = Supervised(board)
        wait_line(board, "mqtt: connected")  # nothing offered: the relay said 204
        assert "USER v1" in board.console() and not (board.state / "slot.json").exists()

        good = make_bundle(tmp_path, "2", USER % ("v2", "2"))
        offer(ota_dir, good)
        board.proc.kill()  # the next boot (a power cycle) asks the relay
        wait_line(board, "OTA UPDATED")
        assert "USER v2" in board.console()
        slot = json.loads((board.state / "slot.json").read_text())
        assert slot["cur"] == "app_a" and "trial" not in slot

        crash = make_bundle(tmp_path, "3", 'raise RuntimeError("boom at import")\n')
        offer(ota_dir, crash)
        n = len(board.lines)
        board.proc.kill()
        wait_line(board, "rolled back from slot app_b", after=n)
        assert "boom at import" in board.console()
        n = len(board.lines)
        board.proc.kill()  # the relay still offers it: declined
        wait_line(board, "was refused before (rolled back", after=n)
        slot = json.loads((board.state / "slot.json").read_text())
        assert slot["cur"] == "app_a"
        assert svc.keys[DEVICE] not in board.console() and tok.password not in board.console()
    finally:
        if run is not None:
            run.stop()
        broker.stop()
        svc.stop()
