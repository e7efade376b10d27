"""`uplink ota DEVICE`: the bundle left for `uplink relay`, and the relay's signed GET /v1/ota
(204 without one, the file with Range, x-sha256 and x-fw-ver with one, 401 unsigned)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json

from host_tools import ota_bundle as bu
from host_tools.relay import OTA_PATH, sign_headers
from tests.host.test_relay import BZ_KEY, KEY, Harness
from tests.host.uplink_helpers import Env

FLEET = """
[relay]
url = "https://192.168.1.10:8443"
hosts = ["192.168.1.10"]

[devices.wt-1]
board = "esp32-s3"  # a TLS cloud and the relay: more than an esp32-devkitc holds (config.tls_refusal)
[devices.wt-1.platform]
kind = "weightron"
credentials = "relay"
device_id = "wt-1"
application_id = "app"
oidc = { client_id = "abc", client_secret = "secret:wt_cs", api_key = "secret:wt_api" }

[devices.tb-1]
board = "esp32-devkitc"
[devices.tb-1.platform]
kind = "thingsboard"
token = "secret:t"
"""


def small_bundle(tmp_path, board, version="2.1"):
    f = tmp_path / "m.mpy"
    f.write_bytes(b"M\x06" + b"x" * 3000)
    return bu.make({"uplink/m.mpy": f}, tmp_path / f"b-{version}.uplb", board=board, arch=None, version=version)


def test_ota_leaves_the_bundle_for_the_relay_and_refuses_what_cannot_go(tmp_path):
    env = Env(tmp_path / "env", FLEET)
    made = small_bundle(tmp_path, "esp32-s3")
    r = env.run("ota", "wt-1", "--bundle", str(made.path), "--json")
    assert r.code == 0, r.output
    info = json.loads(r.stdout)
    left = tmp_path / "env" / "state" / "ota" / "sha256" / f"{made.sha256}.uplb"  # content-addressed
    assert info["bundle"] == str(left) and info["version"] == "2.1"
    assert left.read_bytes() == made.path.read_bytes()
    offer = json.loads((tmp_path / "env" / "state" / "ota" / "wt-1.offer").read_text())
    assert offer == {"sha256": made.sha256, "version": "2.1", "size": made.size}
    # a device the relay does not serve: the cloud's own OTA is the way
    r = env.run("ota", "tb-1", "--bundle", str(made.path))
    assert r.code != 0 and "cloud's OTA" in r.output
    # a bundle for another board
    other = small_bundle(tmp_path, "esp32-c3", "2.2")
    r = env.run("ota", "wt-1", "--bundle", str(other.path))
    assert r.code != 0 and "'esp32-c3'" in r.output
    assert left.read_bytes() == made.path.read_bytes()  # the offer stands as it was
    assert json.loads((tmp_path / "env" / "state" / "ota" / "wt-1.offer").read_text()) == offer


def test_relay_serves_the_offer_signed_with_range(provider, pki, tmp_path):  # noqa: F811
    made = small_bundle(tmp_path, "esp32-devkitc")
    ota_dir = tmp_path / "ota"

    async def go():
        async with Harness(provider, pki, ota_dir=ota_dir) as h:
            none = await h.get(path=OTA_PATH)
            unsigned = await h.http.get(h.base + OTA_PATH)
            ota_dir.mkdir()
            (ota_dir / "wt-1.uplb").write_bytes(made.path.read_bytes())
            (ota_dir / "wt-1.uplb.sha256").write_text(f"{made.sha256}  wt-1.uplb\n")
            whole = await h.get(path=OTA_PATH)
            hdr = {**sign_headers("wt-1", KEY, "GET", OTA_PATH), "Range": "bytes=1000-"}
            part = await h.http.get(h.base + OTA_PATH, headers=hdr)
            other = await h.get(device="bz-1", key=BZ_KEY, path=OTA_PATH)
            return none, unsigned, whole, part, other

    none, unsigned, whole, part, other = asyncio.run(go())
    raw = made.path.read_bytes()
    assert none.status_code == 204 and unsigned.status_code == 401
    assert whole.status_code == 200 and whole.content == raw
    assert base64.b64decode(whole.headers["x-sha256"]) == hashlib.sha256(raw).digest()
    assert whole.headers["x-fw-ver"] == "2.1"
    assert part.status_code == 206 and part.content == raw[1000:]
    assert part.headers["content-range"] == f"bytes 1000-{len(raw) - 1}/{len(raw)}"
    assert other.status_code == 204  # each device sees only its own offer


def test_ota_refuses_a_version_a_board_may_run_with_other_content(tmp_path):
    env = Env(tmp_path / "env", FLEET)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    usb = small_bundle(tmp_path / "a", "esp32-s3", version=_fw_version())
    r = env.run("ota", "wt-1", "--bundle", str(usb.path))
    assert r.code == 6 and "reports as running (the firmware's own)" in r.stderr, r.output
    first = small_bundle(tmp_path / "a", "esp32-s3", version="2.1")
    assert env.run("ota", "wt-1", "--bundle", str(first.path)).code == 0
    assert env.run("ota", "wt-1", "--bundle", str(first.path)).code == 0  # the same one again: fine
    f = tmp_path / "b" / "m.mpy"
    f.write_bytes(b"M\x06" + b"y" * 3000)
    other = bu.make({"uplink/m.mpy": f}, tmp_path / "b" / "b.uplb", board="esp32-s3", arch=None, version="2.1")
    r = env.run("ota", "wt-1", "--bundle", str(other.path))
    assert r.code == 6, r.output
    assert "error: version 2.1 is already offered with other content (" in r.stderr
    left = json.loads((tmp_path / "env" / "state" / "ota" / "wt-1.offer").read_text())
    assert left["sha256"] == first.sha256  # the offer stands as it was


def _fw_version() -> str:
    from host_tools.cli import _firmware_version

    return _firmware_version()
