"""`uplink build --freeze` and `uplink deploy` with device.frozen: the uplink/ package frozen into
the board's MicroPython image stays off its filesystem, and deploy runs only on an image that
froze this very build. The virtual board stands in for such an image with the --freeze output
on its module path after the port's own frozen modules (a real image compiles the same sources
into flash: tools/esp32-model/README.md, "A model with the firmware frozen", measures that)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from host_tools import freeze
from tests.host.test_deploy_virtual_board import TOKEN, board_files, boots_and_publishes, fleet
from tests.host.uplink_helpers import REPO, Env
from tests.mpy_plugin import port_heap
from tests.virtual_board.launcher import VirtualBoard


def env_for(tmp_path: Path, broker, frozen: bool = True) -> Env:
    env = Env(tmp_path / "fleet", f"[devices.bench]\nfrozen = {'true' if frozen else 'false'}\n" + fleet(broker))
    env.env["UPLINK_SECRET_BENCH_TOKEN"] = TOKEN
    fw = tmp_path / "firmware"
    shutil.copytree(REPO / "firmware", fw, ignore=shutil.ignore_patterns("__pycache__"))
    env.env["UPLINK_FIRMWARE_DIR"] = str(fw)
    return env


def frozen_image(env: Env, out: Path) -> Path:
    r = env.run("build", "--freeze", str(out), "--json")
    assert r.code == 0, r.output
    return out


def test_build_freeze_writes_the_package_its_build_id_and_a_manifest(tmp_path, broker):
    env = env_for(tmp_path, broker)
    out = tmp_path / "frz"
    r = env.run("build", "--freeze", str(out), "--json")
    assert r.code == 0, r.output
    info = json.loads(r.stdout)
    fw = Path(env.env["UPLINK_FIRMWARE_DIR"])
    sources = {p.relative_to(fw).as_posix(): p.read_bytes() for p in (fw / "uplink").rglob("*.py")}
    written = {p.relative_to(out).as_posix(): p.read_bytes() for p in (out / "uplink").rglob("*.py")}
    assert written.pop("uplink/_frozen.py") == f'# uplink build --freeze\nBUILD = "{info["build"]}"\n'.encode()
    assert written == sources
    assert info["build"] == freeze.build_id(sources)
    manifest = (out / "manifest.py").read_text()
    assert 'include("$(PORT_DIR)/boards/manifest.py")' in manifest  # the port's own frozen modules stay
    assert f'package("uplink", base_path={str(out.resolve())!r})' in manifest
    # the id follows the sources, and only them
    again = env.run("build", "--freeze", str(tmp_path / "frz2"), "--json")
    assert json.loads(again.stdout)["build"] == info["build"]
    (fw / "uplink" / "log.py").write_text((fw / "uplink" / "log.py").read_text() + "\n# changed\n")
    changed = env.run("build", "--freeze", str(tmp_path / "frz3"), "--json")
    assert json.loads(changed.stdout)["build"] != info["build"]


def test_the_package_stays_off_the_filesystem_and_the_board_boots_the_frozen_one(tmp_path, broker, model):
    plain = env_for(tmp_path / "p", broker, frozen=False)
    env = env_for(tmp_path, broker)
    vb = VirtualBoard(tmp_path / "board", heap=port_heap("64k"), frozen=frozen_image(env, tmp_path / "frz")).start()
    try:
        assert plain.run("-q", "deploy", "bench", "--port", vb.port, "--no-reset").code == 0
        assert [p for p in board_files(vb.root) if p.startswith("uplink/")]  # a deploy without the image's
        r = env.run("deploy", "bench", "--port", vb.port, "--json", "--no-reset")
        assert r.code == 0, r.output
        on_board = board_files(vb.root)
        assert "main.py" in on_board and "config.json" in on_board
        assert not [p for p in on_board if p.startswith("uplink/")]  # nothing to shadow the image's package
        assert json.loads((vb.root / "config.json").read_text())["device"]["frozen"] is True
    finally:
        vb.stop()
    # (256k: the stand-in's sources compile into the heap, where an image's frozen bytecode would not)
    out = boots_and_publishes(broker, [model, "-X", "heapsize=256k", "main.py"], vb.root, vb.micropypath())
    assert "device.frozen is set" not in out, out


def test_a_board_whose_image_froze_nothing_or_another_build_is_told_before_anything_is_copied(
        tmp_path, broker, model):
    env = env_for(tmp_path, broker)
    vb = VirtualBoard(tmp_path / "board", heap=port_heap("64k")).start()
    try:
        r = env.run("deploy", "bench", "--port", vb.port, "--no-reset")
        assert r.code != 0
        assert "has no frozen uplink package" in r.stderr and "uplink build --freeze" in r.stderr, r.stderr
        assert not board_files(vb.root)
    finally:
        vb.stop()
    old = frozen_image(env, tmp_path / "frz")
    fw = Path(env.env["UPLINK_FIRMWARE_DIR"])
    (fw / "uplink" / "log.py").write_text((fw / "uplink" / "log.py").read_text() + "\n# a newer build\n")
    vb = VirtualBoard(tmp_path / "board2", heap=port_heap("64k"), frozen=old).start()
    try:
        r = env.run("deploy", "bench", "--port", vb.port, "--no-reset")
        assert r.code != 0
        assert "froze another build of the firmware" in r.stderr, r.stderr
        assert not board_files(vb.root)
    finally:
        vb.stop()


def test_frozen_and_romfs_together_are_refused_and_frozen_quiets_the_memory_warning(tmp_path, broker):
    both = Env(tmp_path / "both", "[devices.bench]\nboard = \"esp32-devkitc\"\nfrozen = true\nromfs = true\n"
               + fleet(broker))
    both.env["UPLINK_SECRET_BENCH_TOKEN"] = TOKEN
    r = both.run("validate")
    assert r.code != 0 and "frozen: device.romfs is set too" in r.output, r.output
    for frozen, warned in (("false", True), ("true", False)):
        e = Env(tmp_path / frozen, f"[devices.bench]\nboard = \"esp32-devkitc\"\nfrozen = {frozen}\n" + fleet(broker))
        e.env["UPLINK_SECRET_BENCH_TOKEN"] = TOKEN
        r = e.run("validate")
        assert r.code == 0, (frozen, r.output)
        assert ("leaves no room for a reconnect's TLS handshake" in r.output) is warned, r.output
