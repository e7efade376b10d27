"""`uplink ota` and `uplink build --bundle` under `umask 000`: what the relay or a cloud ships
to boards is 0600 in 0700 folders, so no other local user can swap a bundle and its checksum
(issue 22). Folders left loose by an earlier run are tightened, as private_dir does elsewhere."""

from __future__ import annotations

import json
import os
import stat

import pytest

from tests.host.test_build_flash import small_firmware
from tests.host.test_ota_cli import FLEET, small_bundle
from tests.host.uplink_helpers import Env


def mode(p) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def assert_private_tree(top) -> None:
    """`top` and everything in it: folders 0700, files 0600, no temporary file left behind."""
    assert mode(top) == 0o700, top
    for p in top.rglob("*"):
        assert not p.name.startswith(".tmp-"), p
        assert mode(p) == (0o700 if p.is_dir() else 0o600), (p, oct(mode(p)))


def loosen(*paths) -> None:
    """What an earlier run under `umask 000` (before the fix) left: world-writable."""
    for p in paths:
        if p.suffix:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"old")
        else:
            p.mkdir(parents=True, exist_ok=True)
        os.chmod(p, 0o666 if p.suffix else 0o777)


@pytest.mark.parametrize("before", ["fresh", "loose"])
def test_ota_offer_is_private_under_umask_000(tmp_path, umask000, before):
    env = Env(tmp_path / "env", FLEET)
    state = tmp_path / "env" / "state"
    if before == "loose":
        loosen(state, state / "ota", state / "ota" / "wt-1.uplb", state / "ota" / "wt-1.uplb.sha256")
    (tmp_path / "src").mkdir()
    made = small_bundle(tmp_path / "src", "esp32-s3")
    r = env.run("ota", "wt-1", "--bundle", str(made.path), "--json")
    assert r.code == 0, r.output
    blob = state / "ota" / "sha256" / f"{made.sha256}.uplb"  # content-addressed
    assert json.loads(r.stdout)["bundle"] == str(blob)
    assert blob.read_bytes() == made.path.read_bytes()
    # the offer names it; an earlier layout's per-device copy is gone
    assert sorted(p.name for p in (state / "ota").iterdir()) == ["sha256", "wt-1.offer"]
    assert json.loads((state / "ota" / "wt-1.offer").read_text()) == {
        "sha256": made.sha256, "version": made.manifest["version"], "size": made.size}
    assert_private_tree(state)


@pytest.mark.parametrize("before", ["fresh", "loose"])
def test_build_bundle_and_ota_building_one_are_private_under_umask_000(tmp_path, umask000, before):
    fw = small_firmware(tmp_path)
    env = Env(tmp_path / "env", FLEET)
    build, state = env.build, tmp_path / "env" / "state"
    if before == "loose":
        loosen(build, build / "bundles", build / "bundles" / "wt-1-3.0.uplb", state, state / "ota")
    fw_env = {"UPLINK_FIRMWARE_DIR": str(fw)}
    r = env.run("build", "--bundle", "wt-1", "--version", "3.0", "--json", env=fw_env)
    assert r.code == 0, r.output
    info = json.loads(r.stdout)
    assert info["bundle"] == str(build / "bundles" / "wt-1-3.0.uplb")
    r = env.run("ota", "wt-1", "--version", "3.1", "--json", env=fw_env)  # builds its own bundle
    assert r.code == 0, r.output
    # the compiled modules that go into a bundle sit inside the 0700 build folder
    assert mode(build) == 0o700
    assert_private_tree(build / "bundles")
    assert sorted(p.name for p in (build / "bundles").iterdir()) == [
        "wt-1-3.0.uplb", "wt-1-3.0.uplb.sha256", "wt-1-3.1.uplb", "wt-1-3.1.uplb.sha256"]
    assert_private_tree(state)
