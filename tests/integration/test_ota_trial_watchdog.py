"""A boot on trial that never gets Wi-Fi is reset by the watchdog main.py arms for the trial,
and the next boot rolls back. The firmware's main.py runs as on an ESP32: the esp32 backend over
the stand-in `network` (no access point on the air: the router is down) and `machine`, whose
WDT bites as the chip's does (the host board's watchdog thread: it ends the process and leaves
"watchdog" as the next boot's reset cause)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration import mpy
from tests.mpy_plugin import FIRMWARE

BOOT = r"""
import os, sys
os.chdir(sys.argv[1])
import fake_hw
fake_hw.install()
import fake_network
fake_network.reset()  # no access point: Wi-Fi never comes up
from uplink import board, board_host
board.DEFAULT = "esp32-devkitc"  # main.py's board on the chip (sys.platform "esp32")
fake_hw.machine.WDT = lambda id=0, timeout=5000: board_host._Watchdog(timeout)
if board_host._cause[0] == "watchdog":  # the last run's bite, as machine.reset_cause() says it
    fake_hw.machine.cause = fake_hw.machine.WDT_RESET
with open(sys.argv[2]) as f:
    exec(f.read(), {"__name__": "__main__"})
"""


def state(tmp_path: Path) -> Path:
    d = tmp_path / "board"
    (d / "app_a").mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({
        "device": {"name": "trial", "board": "esp32-devkitc"},
        "wifi": {"networks": [{"ssid": "home", "password": "pw"}], "timeout_s": 1},
        "platform": {"kind": "thingsboard", "url": "mqtt://127.0.0.1:9", "token": "t"},
    }))
    # an update installed in app_a (its modules are the root's: only the manifest matters
    # here), switched to on trial by uplink.ota
    (d / "app_a" / "bundle.json").write_text(json.dumps({"version": "2", "trial_s": 2, "files": []}))
    (d / "slot.json").write_text(json.dumps({"cur": "app_a", "prev": "", "trial": 0, "sum": "ab" * 32}))
    return d


def test_a_trial_without_wifi_is_reset_by_the_watchdog_and_rolled_back(tmp_path):
    d = state(tmp_path)
    p = mpy.start(BOOT, args=(d, FIRMWARE / "main.py"))
    p.expect("wifi")  # the trial's app started, and waits for Wi-Fi
    assert p.wait(30) == -9, p.output  # the watchdog bit: before, it waited for Wi-Fi forever
    assert json.loads((d / "slot.json").read_text())["trial"] == 1  # the trial's boot, counted
    p = mpy.start(BOOT, args=(d, FIRMWARE / "main.py"))
    try:
        p.expect("reset cause watchdog")
        p.expect("wifi")  # the previous app runs; no trial, no watchdog before its supervisor
    finally:
        p.kill()
    slot = json.loads((d / "slot.json").read_text())
    assert slot["failed"] == "app_a" and slot["cur"] == "" and "trial" not in slot, slot
    assert "watchdog" in json.loads((d / "crashes.json").read_text())["last"]
