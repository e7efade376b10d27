"""An update to a device whose firmware runs from ROMFS (device.romfs) ends in ROMFS: the
compiled firmware on the host board in the ESP32 model with a ROMFS partition file, updated
through ThingsBoard's OTA (tests/integration/tb_ota_server.py) against mosquitto. After the
trial commits, the board writes the slot's package into the partition (uplink.ota_romfs,
through vfs.rom_ioctl as on the chip), and boots the update from /rom."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from host_tools import hostboard, romfs_deploy
from host_tools import ota_bundle as bu
from tests.integration.hostboard import HostBoard
from tests.integration.tb_ota_server import TbOta
from tests.integration.test_ota_tb import TRIAL_HEAP, Supervised, config

pytestmark = pytest.mark.skipif(not hostboard.esp32_model(), reason="ROMFS needs the ESP32 model")

# where the update's own module was imported from: its slot, or the partition
USER = ('import uplink.marker\nprint("USER %s from", uplink.marker.__file__)\n'
        'def read():\n    return {"v": %r}\n')


def romfs_bundle(tmp: Path) -> tuple[Path, dict[str, bytes]]:
    """Version 2, whose uplink/ package differs from the deployed one (a module more), and
    that package's files."""
    from host_tools import build

    fw = hostboard.compile_firmware(hostboard.ROOT / "build" / "host-mpy")
    parts = {k: v for k, v in build.files(fw).items() if not k.startswith("user.")}
    (tmp / "marker.py").write_text("V = 2\n")
    (tmp / "user-2.py").write_text(USER % ("v2", "2"))
    parts["uplink/marker.py"] = tmp / "marker.py"
    parts["user.py"] = tmp / "user-2.py"
    path = bu.make(parts, tmp / "b-2.uplb", board="host", arch=None, version="2", commit_after_s=2).path
    return path, {p: f.read_bytes() for p, f in parts.items() if p.startswith("uplink/")}


def test_a_committed_update_moves_into_romfs_and_boots_from_there(broker, tmp_path):
    path, pkg = romfs_bundle(tmp_path)
    tb = TbOta(broker.ports["mqtt"], path)
    cfg = config(broker.ports["mqtt"])
    cfg["device"]["romfs"] = True
    board = HostBoard(tmp_path / "board", cfg, user_py='print("USER v1")\ndef read():\n    return {"v": 1}\n',
                      heapsize=TRIAL_HEAP)
    run = Supervised(board)
    try:
        board.wait_for_line("USER v1", 30)
        tb.announce()
        tb.wait_state("UPDATED", 180, board.console)
        board.wait_for_line("USER v2 from /rom/uplink/marker.py", 60)
        console = board.console()
        assert "resetting to move it into ROMFS" in console
        assert "the update on trial runs from its slot" in console
        assert "runs from ROMFS from the next boot" in console
        assert not (board.state / "app_a" / "uplink").exists()
        assert not (board.state / "app_a" / ".uplink-old").exists()
        assert (board.state / "app_a" / "user.py").exists()  # the rest of the slot stays
        # the partition holds what `uplink deploy` would write for this package, byte for byte
        img = romfs_deploy.image(pkg)
        assert board.romfs is not None and board.romfs.read_bytes()[:len(img)] == img
        # the boot after the move is a ROMFS boot: no warning about the filesystem's copy
        last_boot = console[console.rindex("I boot: uplink"):]
        assert "not ROMFS" not in last_boot, last_boot
        slot = json.loads((board.state / "slot.json").read_text())
        assert slot["cur"] == "app_a" and "trial" not in slot
        boots = run.boots
        time.sleep(3)
        assert run.boots == boots  # settled: no further resets
    finally:
        run.stop()
        tb.stop()
