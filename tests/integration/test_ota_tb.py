"""OTA through ThingsBoard end to end: the compiled firmware on the host board (ESP32 model)
against mosquitto and tests/integration/tb_ota_server.py playing ThingsBoard's OTA side.
The board restarts when it resets (exit 75), as a chip would."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import pytest

from host_tools import hostboard
from host_tools import ota_bundle as bu
from tests.faultproxy import FaultProxy
from tests.integration.hostboard import HostBoard
from tests.integration.tb_ota_server import TbOta
from tests.services import mosquitto_bin

# The OTA tests run at 144k: at 128k a download's install met MemoryError 1 run in 4 (the
# resident firmware grew since it fitted; the issue 26 note has the figures)
TRIAL_HEAP = "144k"

pytestmark = pytest.mark.skipif(mosquitto_bin() is None, reason="mosquitto not installed")

USER = 'print("USER %s")\ndef read():\n    return {"v": %r}\n'


def config(port: int) -> dict:
    return {"device": {"name": "ota", "board": "host"}, "ntp": {"servers": []},
            "platform": {"kind": "thingsboard", "url": f"mqtt://127.0.0.1:{port}", "token": "t0k",
                         "client_rpc": False},
            "telemetry": {"interval_s": 1, "health": False}, "outbox": {"max_bytes": 100000}}


def make_bundle(tmp: Path, version: str, user_py: str, board: str = "host", trial_s: int | None = None) -> Path:
    fw = hostboard.compile_firmware(hostboard.ROOT / "build" / "host-mpy")
    from host_tools import build

    files = {k: v for k, v in build.files(fw).items() if not k.startswith("user.")}
    (tmp / f"user-{version}.py").write_text(user_py)
    files["user.py"] = tmp / f"user-{version}.py"
    return bu.make(files, tmp / f"b-{version}.uplb", board=board, arch=None, version=version,
                   commit_after_s=2, trial_s=trial_s).path


class Supervised:
    """Boots the board again after each reset, until stop()."""

    def __init__(self, board: HostBoard):
        self.board, self.boots, self.done = board, 0, False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self) -> None:
        while not self.done:
            self.board.start()
            assert self.board.proc is not None
            code = self.board.proc.wait()
            self.boots += 1
            # reset() exits 75; on the model a reset with the watchdog thread running may also
            # end in the C library's abort ("libgcc_s.so.1 must be installed for
            # pthread_cancel"): still a reset; only a clean exit (0) ends the board
            if code == 0 or not (hostboard.restarts(code) or code < 0):
                return

    def stop(self) -> None:
        self.done = True
        self.board.stop()


def test_update_over_a_connection_cut_five_times_then_committed(broker, tmp_path):
    proxy = FaultProxy(broker.ports["mqtt"])
    path = make_bundle(tmp_path, "2", USER % ("v2", "2"))
    tb = TbOta(broker.ports["mqtt"], path)
    cut_at = {2, 4, 6, 8, 10}

    def cut(n):
        if n in cut_at:
            cut_at.discard(n)
            proxy.cut_all()

    tb.on_chunk = cut
    board = HostBoard(tmp_path / "board", config(proxy.port), user_py=USER % ("v1", "1"), heapsize=TRIAL_HEAP)
    cfg_before = (board.state / "config.json").read_bytes()
    run = Supervised(board)
    try:
        tb.announce()
        done = tb.wait_state("UPDATED", 180, board.console)
        assert done["current_fw_version"] == "2" and done["current_fw_title"] == "uplink-host"
        states = [d["fw_state"] for d in tb.states]
        for s in ("DOWNLOADING", "DOWNLOADED", "VERIFIED", "UPDATING", "UPDATED"):
            assert s in states, states
        assert not cut_at and proxy.cuts >= 5
        assert tb.chunks >= (path.stat().st_size + 1023) // 1024  # every chunk (ota_thingsboard.CHUNK), some twice
        assert "USER v2" in board.console()
        slot = json.loads((board.state / "slot.json").read_text())
        assert slot["cur"] == "app_a" and "trial" not in slot
        assert (board.state / "config.json").read_bytes() == cfg_before  # never in a bundle
        assert hashlib.sha256(path.read_bytes()).hexdigest() == slot["sum"]
    finally:
        run.stop()
        tb.stop()
        proxy.close()


# reports whether the updater's code is in the heap
USER_SEES_OTA = ('import sys\nprint("USER %s")\ndef read():\n'
                 '    return {"v": %r, "ota": [m for m in sys.modules if m.startswith("uplink.ota")] != []}\n')


def test_the_updater_is_loaded_only_while_it_has_work(broker, tmp_path):
    """A device with nothing to update does not carry the updater (~9 KB of heap on the model);
    a package assigned while it was away, with no attribute push, is found at its next connect
    (the adapter asks at every connect); after the new app's trial the code leaves again."""
    proxy = FaultProxy(broker.ports["mqtt"])
    path = make_bundle(tmp_path, "2", USER_SEES_OTA % ("v2", "2"))
    tb = TbOta(broker.ports["mqtt"], path)
    assigned, tb.attrs = tb.attrs, {}  # nothing assigned yet: the connect-time question gets {}
    board = HostBoard(tmp_path / "board", config(proxy.port), user_py=USER_SEES_OTA % ("v1", "1"), heapsize=TRIAL_HEAP)
    run = Supervised(board)
    try:
        tb.wait_reading(lambda v: len(tb.readings) >= 3, 60, board.console)
        assert [v["ota"] for v in tb.readings] == [False] * len(tb.readings)
        tb.attrs = assigned  # assigned while the device is away: no push on the attributes topic
        proxy.cut_all()
        tb.wait_state("UPDATED", 180, board.console)
        tb.wait_reading(lambda v: v.get("v") == "2" and v["ota"] is False, 60, board.console)
    finally:
        run.stop()
        tb.stop()
        proxy.close()


def test_refusals_and_a_crashing_bundle_rolls_back(broker, tmp_path):
    good = make_bundle(tmp_path, "2", USER % ("v2", "2"))
    raw = good.read_bytes()
    tb = TbOta(broker.ports["mqtt"], raw, checksum="ab" * 32)
    board = HostBoard(tmp_path / "board", config(broker.ports["mqtt"]), user_py=USER % ("v1", "1"), heapsize=TRIAL_HEAP)
    run = Supervised(board)
    try:
        tb.announce()
        err = tb.wait_state("FAILED", 60, board.console)["fw_error"]
        assert "checksum mismatch" in err
        # a truncated download: the server's file ends before fw_size
        tb.states.clear()
        tb.data = raw[: len(raw) // 2]
        tb.attrs.update(fw_version="2b", fw_checksum=hashlib.sha256(raw).hexdigest())
        tb.announce()
        assert "download truncated" in tb.wait_state("FAILED", 60, board.console)["fw_error"]
        # a bundle for another board
        other = make_bundle(tmp_path, "3", USER % ("v3", "3"), board="esp32-devkitc").read_bytes()
        tb.states.clear()
        tb.data = other
        tb.attrs.update(fw_version="3", fw_size=len(other), fw_checksum=hashlib.sha256(other).hexdigest())
        tb.announce()
        assert "bundle is for board 'esp32-devkitc'" in tb.wait_state("FAILED", 60, board.console)["fw_error"]
        assert not (board.state / "slot.json").exists() and "USER v1" in board.console()
        # code that crashes on boot: one trial boot, then the old app, which says why
        crash = make_bundle(tmp_path, "4", 'raise RuntimeError("boom at import")\n').read_bytes()
        tb.states.clear()
        tb.data = crash
        tb.attrs.update(fw_version="4", fw_size=len(crash), fw_checksum=hashlib.sha256(crash).hexdigest())
        tb.announce()
        tb.wait_state("UPDATING", 60, board.console)
        failed = tb.wait_state("FAILED", 90, board.console)
        assert "rolled back" in failed["fw_error"] and "boom at import" in failed["fw_error"], failed
        assert failed["current_fw_version"] != "4"
        slot = json.loads((board.state / "slot.json").read_text())
        assert slot["cur"] == "" and slot["bad"] == tb.attrs["fw_checksum"]
    finally:
        run.stop()
        tb.stop()


def test_a_bundle_missing_a_driver_or_whose_read_fails_is_rolled_back(broker, tmp_path):
    """A trial proves the new code works, not only that it connects: an ImportError from
    what user.py imports is a crash, and a read() that never returns a reading fails the
    trial; both roll back and ThingsBoard hears why."""
    board = HostBoard(tmp_path / "board", config(broker.ports["mqtt"]), user_py=USER % ("v1", "1"), heapsize=TRIAL_HEAP)
    nodriver = make_bundle(tmp_path, "5", 'import a_driver_left_out\ndef read():\n    return {"v": 5}\n').read_bytes()
    tb = TbOta(broker.ports["mqtt"], nodriver, version="5")
    run = Supervised(board)
    try:
        tb.announce()
        failed = tb.wait_state("FAILED", 120, board.console)
        assert "rolled back" in failed["fw_error"] and "a_driver_left_out" in failed["fw_error"], failed
        assert failed["current_fw_version"] != "5"
        broken = make_bundle(tmp_path, "6", 'def read():\n    raise OSError("sensor gone")\n', trial_s=8).read_bytes()
        tb.states.clear()
        tb.data = broken
        tb.attrs.update(fw_version="6", fw_size=len(broken), fw_checksum=hashlib.sha256(broken).hexdigest())
        tb.announce()
        failed = tb.wait_state("FAILED", 120, board.console)
        assert "rolled back" in failed["fw_error"] and "read() has not returned a reading" in failed["fw_error"], failed
        assert not [d for d in tb.states if d["fw_state"] == "UPDATED"]
        # the old app runs; the outcome's mark goes once ThingsBoard acknowledged it
        end = time.monotonic() + 30
        while "owe" in (slot := json.loads((board.state / "slot.json").read_text())) and time.monotonic() < end:
            time.sleep(0.1)
        assert slot["cur"] == "" and "owe" not in slot, slot
    finally:
        run.stop()
        tb.stop()
