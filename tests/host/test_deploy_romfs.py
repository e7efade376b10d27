"""`uplink deploy` with device.romfs: the uplink/ package goes to the board's ROMFS partition as
one image (host_tools/romfs_deploy.py), the rest to its filesystem; the board then boots with
the package's bytecode in flash. The virtual board runs on the ESP32 model with a ROMFS
partition file (-X romfs)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from tests.host.test_deploy_virtual_board import TOKEN, board_files, boots_and_publishes, fleet
from tests.host.uplink_helpers import REPO, Env
from tests.mpy_plugin import port_heap
from tests.virtual_board.launcher import VirtualBoard

PARTITION = 256 * 1024


def romfs_fleet(broker, romfs: bool = True) -> str:
    return f"[devices.bench]\nromfs = {'true' if romfs else 'false'}\n" + fleet(broker)


def board(tmp_path: Path, partition: int | None = PARTITION, **kw) -> VirtualBoard:
    part = None
    if partition:
        part = tmp_path / "romfs.bin"
        part.write_bytes(b"\xff" * partition)
    return VirtualBoard(tmp_path / "board", heap=port_heap("64k"), romfs=part, **kw).start()


def env_for(tmp_path: Path, broker, romfs: bool = True) -> Env:
    env = Env(tmp_path / "fleet", romfs_fleet(broker, romfs))
    env.env["UPLINK_SECRET_BENCH_TOKEN"] = TOKEN
    fw = tmp_path / "firmware"
    shutil.copytree(REPO / "firmware", fw, ignore=shutil.ignore_patterns("__pycache__"))
    env.env["UPLINK_FIRMWARE_DIR"] = str(fw)
    return env


def rom_listing(model: str, part: Path) -> list[str]:
    code = ("import os\ndef walk(d):\n for n in sorted(os.listdir(d)):\n  p=d+'/'+n\n"
            "  if os.stat(p)[0]&0x4000:\n   walk(p)\n  else:\n   print(p)\nwalk('/rom')\n")
    p = subprocess.run([model, "-X", f"romfs={part}", "-c", code], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout.split()


def test_the_package_goes_to_romfs_the_rest_to_the_filesystem_and_it_boots(tmp_path, broker, model):
    vb = board(tmp_path)
    try:
        env = env_for(tmp_path, broker)
        r = env.run("deploy", "bench", "--port", vb.port, "--json")
        assert r.code == 0, r.output
        first = json.loads(r.stdout)
        assert first["copy"][0]["path"] == "/rom"
        on_board = board_files(vb.root)
        assert "main.py" in on_board and "config.json" in on_board
        assert not [p for p in on_board if p.startswith("uplink/")]  # nothing to shadow /rom/uplink
        rom = rom_listing(model, vb.romfs)
        assert "/rom/uplink/mqtt.mpy" in rom and "/rom/uplink/platforms/thingsboard.mpy" in rom
        assert "/rom/uplink/platforms/blynk.mpy" not in rom  # only this device's modules, as on flash

        # again: the image is compared on the board, not written
        vb.reset_counters()
        r = env.run("deploy", "bench", "--port", vb.port, "--json")
        again = json.loads(r.stdout)
        assert again["copy"] == [] and "/rom" in again["unchanged"]
        assert vb.wire_bytes < 4096
    finally:
        vb.stop()

    # the board's next boot: the filesystem has no uplink/, so the app can only come from /rom
    boots_and_publishes(broker, [model, "-X", "heapsize=128k", "-X", f"romfs={vb.romfs}", "main.py"], vb.root,
                        ".frozen")


def test_a_package_left_on_the_filesystem_by_an_earlier_deploy_is_removed(tmp_path, broker, model):
    vb = board(tmp_path)
    try:
        env = env_for(tmp_path, broker, romfs=False)
        assert env.run("-q", "deploy", "bench", "--port", vb.port, "--no-reset").code == 0
        assert "uplink/mqtt.mpy" in board_files(vb.root)
        env.write_fleet(romfs_fleet(broker))
        r = env.run("deploy", "bench", "--port", vb.port, "--json", "--no-reset")
        assert r.code == 0, r.output
        assert "uplink/mqtt.mpy" in json.loads(r.stdout)["remove"]
        assert not [p for p in board_files(vb.root) if p.startswith("uplink/")]
        # nor its empty directory, which MicroPython would import as the package, before /rom's
        assert not (vb.root / "uplink").exists()
        assert "/rom/uplink/mqtt.mpy" in rom_listing(model, vb.romfs)
    finally:
        vb.stop()


def test_a_write_cut_short_is_found_and_written_again_by_the_next_deploy(tmp_path, broker, model):
    # a power cut half-way leaves sectors erased (0xFF): the board's sha256 differs, so the
    # next deploy writes the whole image again instead of calling it unchanged
    vb = board(tmp_path)
    try:
        env = env_for(tmp_path, broker)
        assert env.run("-q", "deploy", "bench", "--port", vb.port, "--no-reset").code == 0
        good = vb.romfs.read_bytes()
        with open(vb.romfs, "r+b") as f:
            f.seek(8192)
            f.write(b"\xff" * 8192)
        r = env.run("deploy", "bench", "--port", vb.port, "--json", "--no-reset")
        assert r.code == 0, r.output
        assert [c["path"] for c in json.loads(r.stdout)["copy"]] == ["/rom"]
        assert vb.romfs.read_bytes() == good
    finally:
        vb.stop()


def test_a_board_without_deflate_gets_the_image_as_plain_bytes(tmp_path, broker, model):
    vb = board(tmp_path, deflate=False)
    try:
        r = env_for(tmp_path, broker).run("deploy", "bench", "--port", vb.port, "--no-reset")
        assert r.code == 0, r.output
        assert "/rom/uplink/mqtt.mpy" in rom_listing(model, vb.romfs)
    finally:
        vb.stop()


def test_a_board_without_a_romfs_partition_is_told_before_anything_is_copied(tmp_path, broker, model):
    vb = board(tmp_path, partition=None)
    try:
        env = env_for(tmp_path, broker)
        r = env.run("deploy", "bench", "--port", vb.port)
        assert r.code == 5, r.output
        assert "device.romfs" in r.stderr and "no ROMFS partition" in r.stderr and "MICROPY_VFS_ROM" in r.stderr
        assert board_files(vb.root) == {}
    finally:
        vb.stop()


def test_an_image_bigger_than_the_partition_is_told_before_anything_is_copied(tmp_path, broker, model):
    vb = board(tmp_path, partition=16 * 1024)
    try:
        env = env_for(tmp_path, broker)
        r = env.run("deploy", "bench", "--port", vb.port)
        assert r.code == 5, r.output
        assert "16384-byte ROMFS partition" in r.stderr
        assert board_files(vb.root) == {}
        assert vb.romfs.read_bytes() == b"\xff" * 16 * 1024
    finally:
        vb.stop()
