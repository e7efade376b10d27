"""`uplink build --bundle DEVICE`: one OTA file with a manifest the board checks while streaming."""

from __future__ import annotations

import hashlib
import json

import pytest

from host_tools import ota_bundle as bu
from tests.host.test_build_flash import small_firmware
from tests.host.uplink_helpers import Env

FLEET = '[devices.pump]\nboard = "esp32-devkitc"\n[devices.pump.platform]\nkind = "thingsboard"\ntoken = "secret:t"\n'


def test_bundle_cli_manifest_hashes_and_no_secrets(tmp_path):
    fw = small_firmware(tmp_path)
    (fw / "user.py").write_text("def read():\n    return {'x': 1}\n")
    (fw / "config.json").write_text('{"platform": {"token": "SECRET"}}')  # must never travel
    env = Env(tmp_path / "env", FLEET)
    r = env.run("build", "--bundle", "pump", "--version", "1.2.3", "--json",
                env={"UPLINK_FIRMWARE_DIR": str(fw), "UPLINK_SECRET_T": "x"})
    assert r.code == 0, r.output
    info = json.loads(r.stdout)
    raw = open(info["bundle"], "rb").read()
    assert info["sha256"] == hashlib.sha256(raw).hexdigest() and info["size"] == len(raw)
    assert open(info["bundle"] + ".sha256").read().split()[0] == info["sha256"]
    head, body = raw.split(b"\n", 1)
    m = json.loads(head)
    assert m["version"] == "1.2.3" and m["board"] == "esp32-devkitc" and m["arch"] == "xtensawin"
    paths = [f[0] for f in m["files"]]
    # the boot loader and the board's secrets stay out; the app and the user's code go in
    assert paths == ["uplink/__init__.mpy", "uplink/app.mpy", "user.mpy"]
    assert b"SECRET" not in raw
    pos = 0
    for _path, size, sha in m["files"]:
        assert hashlib.sha256(body[pos:pos + size]).hexdigest() == sha
        assert body[pos:pos + 1] == b"M"  # .mpy
        pos += size
    assert pos == len(body) and m["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert bu.read(info["bundle"]).sha256 == info["sha256"]


def test_bundle_read_refuses_tampering_and_make_refuses_bad_version(tmp_path):
    fw = small_firmware(tmp_path)
    out = tmp_path / "b.uplb"
    made = bu.make({p.relative_to(fw).as_posix(): p for p in fw.rglob("*.py")}, out,
                   board="host", arch=None, version="2")
    raw = bytearray(out.read_bytes())
    raw[-1] ^= 1
    out.write_bytes(bytes(raw))
    with pytest.raises(bu.BundleError, match="sha256 mismatch"):
        bu.read(out)
    assert made.size == len(raw)
    with pytest.raises(bu.BundleError, match="version"):
        bu.make({}, out, board="host", arch=None, version="1 2")


def test_a_bundle_version_comes_from_its_content_and_never_is_the_running_one(tmp_path):
    import re

    fw = small_firmware(tmp_path)
    (fw / "uplink" / "__init__.py").write_text('VERSION = "0.1.0"\n')  # what a USB deploy reports
    (fw / "user.py").write_text("def read():\n    return {'x': 1}\n")
    env = Env(tmp_path / "env", FLEET)
    e = {"UPLINK_FIRMWARE_DIR": str(fw), "UPLINK_SECRET_T": "x"}

    def build(*args):
        r = env.run("build", "--bundle", "pump", *args, "--json", env=e)
        assert r.code == 0, r.output
        return json.loads(r.stdout)

    first = build()
    assert re.fullmatch(r"0\.1\.0\+[0-9a-f]{8}", first["version"]), first
    assert first["bundle"].endswith(f"pump-{first['version']}.uplb")
    assert bu.read(first["bundle"]).manifest["version"] == first["version"]
    assert build()["version"] == first["version"]  # the same content: the same version
    (fw / "user.py").write_text("def read():\n    return {'x': 2}\n")
    assert build()["version"] != first["version"]  # other content: another version
    r = env.run("build", "--bundle", "pump", "--version", "0.1.0", env=e)
    assert r.code == 6, r.output
    assert ("error: version 0.1.0 is what a board deployed over USB reports as running (the firmware's "
            "own): a board running it never installs this update; leave --version out") in r.stderr


def test_a_bundle_for_a_romfs_device_says_where_its_firmware_will_run(tmp_path):
    # the slot's uplink/ comes first on sys.path: the update leaves ROMFS for its trial
    fw = small_firmware(tmp_path)
    (fw / "user.py").write_text("def read():\n    return {'x': 1}\n")
    e = {"UPLINK_FIRMWARE_DIR": str(fw), "UPLINK_SECRET_T": "x"}
    plain = Env(tmp_path / "plain", FLEET).run("build", "--bundle", "pump", "--version", "1.2.3", env=e)
    assert plain.code == 0 and "ROMFS" not in plain.stderr, plain.output
    romfs = FLEET.replace('board = "esp32-devkitc"\n', 'board = "esp32-devkitc"\nromfs = true\n')
    r = Env(tmp_path / "romfs", romfs).run("build", "--bundle", "pump", "--version", "1.2.3", env=e)
    assert r.code == 0, r.output
    assert "runs its firmware from ROMFS (device.romfs)" in r.stderr
    assert "once kept, the board writes it into its ROMFS partition" in r.stderr
