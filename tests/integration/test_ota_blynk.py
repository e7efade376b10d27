"""OTA through Blynk.Air end to end: the compiled firmware on the host board (ESP32 model)
behind the Blynk broker profile; the cloud side publishes downlink/ota/json with the package's
URL (Blynk MQTT API "OTA"), tests/integration/https_files.py serves it over HTTPS. The board
restarts when it resets (exit 75), as a chip would."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.certs import make_pki
from tests.integration.broker_profiles import Blynk, e2e_config
from tests.integration.hostboard import HostBoard
from tests.integration.https_files import FileServer
from tests.integration.test_ota_tb import USER, Supervised, make_bundle
from tests.services import mosquitto_bin

pytestmark = pytest.mark.skipif(mosquitto_bin() is None, reason="mosquitto not installed")

TOKEN = "bl-ota-t0ken"
TMPL = "TMPL4otaTest"


def events(cloud) -> list[str]:
    return [p.decode() for t, p in cloud.got(lambda t, _: t == "event/sys_ota")]


def info_ver(cloud, ver: str):
    return cloud.got(lambda t, p: t == "info/mcu" and json.loads(p).get("ver") == ver)


def test_blynk_air_update_over_https_resumes_cuts_then_committed(env, tmp_path):
    pki = make_pki(tmp_path / "pki")
    raw = make_bundle(tmp_path, "2", USER % ("v2", "2")).read_bytes()
    srv = FileServer(pki, raw, cuts=2)
    proxy = env.proxy(Blynk({TOKEN}, template_id=TMPL))
    cloud = env.cloud()
    cfg = e2e_config("blynk", proxy.url(), token=TOKEN, template_id=TMPL, template_name="OTA", ca="ca.der")
    board = HostBoard(tmp_path / "board", cfg, user_py=USER % ("v1", "1"), files={"ca.der": pki.ca_der.read_bytes()},
                      heapsize="128k")
    cfg_before = (board.state / "config.json").read_bytes()
    run = Supervised(board)
    try:
        cloud.wait(lambda t, _: t == "info/mcu", console=board.console)
        cloud.send("downlink/ota/json", json.dumps({"url": srv.url, "size": len(raw), "type": TMPL, "ver": "2"}))
        # the new app reconnects and says so in info/mcu, as Blynk.Air expects; kept after its trial
        cloud.wait(lambda t, p: (t == "info/mcu" and json.loads(p).get("ver") == "2")
                   or (t == "event/sys_ota" and p.startswith(b"OTA failed")), timeout=180, console=board.console)
        assert not [e for e in events(cloud) if e.startswith("OTA failed")], board.console()
        cloud.wait(lambda t, p: t == "event/sys_ota" and p.startswith(b"Firmware updated to 2"), timeout=60,
                   console=board.console)
        assert events(cloud)[0] == "OTA started: 2", events(cloud)
        assert "USER v2" in board.console()
        # the first two responses were cut mid-body: the next ones asked from where flash stopped
        ranges = [r for _, r in srv.requests]
        assert ranges[0] is None and len(ranges) >= 3 and all(r and r.startswith("bytes=") for r in ranges[1:3]), ranges
        assert srv.requests[0][0] == "/static/bundle.uplb?token=t0k3n"
        assert srv.bytes_out < 2 * len(raw)  # resumed, not downloaded again from the start
        slot = json.loads((board.state / "slot.json").read_text())
        assert slot["cur"] == "app_a" and "trial" not in slot
        assert slot["sum"] == hashlib.sha256(raw).hexdigest()
        assert (board.state / "config.json").read_bytes() == cfg_before
        assert proxy.violations == []
        assert TOKEN not in board.console()
    finally:
        run.stop()
        srv.stop()


def test_blynk_air_refusals_are_reported_and_change_nothing(env, tmp_path):
    pki = make_pki(tmp_path / "pki")
    raw = make_bundle(tmp_path, "2", USER % ("v2", "2")).read_bytes()
    srv = FileServer(pki, raw, sha256=b"\xab" * 32)  # the package's x-sha256 is not its sum
    proxy = env.proxy(Blynk({TOKEN}, template_id=TMPL))
    cloud = env.cloud()
    cfg = e2e_config("blynk", proxy.url(), token=TOKEN, template_id=TMPL, template_name="OTA", ca="ca.der")
    board = HostBoard(tmp_path / "board", cfg, user_py=USER % ("v1", "1"), files={"ca.der": pki.ca_der.read_bytes()})
    run = Supervised(board)
    try:
        cloud.wait(lambda t, _: t == "info/mcu", console=board.console)
        cloud.send("downlink/ota/json", json.dumps({"url": srv.url, "size": len(raw), "ver": "2"}))
        failed = cloud.wait(lambda t, p: t == "event/sys_ota" and p.startswith(b"OTA failed"), timeout=60,
                            console=board.console)
        assert b"checksum mismatch" in failed[-1][1], failed
        # Blynk sends the same ota/json after every info/mcu while the shipment lasts: not again
        boots = run.boots
        cloud.send("downlink/ota/json", json.dumps({"url": srv.url, "size": len(raw), "ver": "2"}))
        board.wait_for_line("2 failed before: not tried again")
        assert run.boots == boots
        # a bundle for another board
        other = make_bundle(tmp_path, "3", USER % ("v3", "3"), board="esp32-devkitc").read_bytes()
        srv.data, srv.sha = other, __import__("base64").b64encode(hashlib.sha256(other).digest()).decode()
        cloud.send("downlink/ota/json", json.dumps({"url": srv.url, "size": len(other), "ver": "3"}))
        cloud.wait(lambda t, p: t == "event/sys_ota" and b"bundle is for board 'esp32-devkitc'" in p, timeout=60,
                   console=board.console)
        # an expired link
        cloud.send("downlink/ota/json", json.dumps({"url": srv.url.replace("/static/", "/gone/"), "size": 10,
                                                    "ver": "4"}))
        cloud.wait(lambda t, p: t == "event/sys_ota" and b"OTA failed" in p and b"HTTP 404" in p, timeout=60,
                   console=board.console)
        assert not (board.state / "slot.json").exists() and "USER v1" in board.console()
        assert proxy.violations == []
    finally:
        run.stop()
        srv.stop()


def test_blynk_air_crashing_package_rolls_back_says_so_and_is_not_tried_again(env, tmp_path):
    pki = make_pki(tmp_path / "pki")
    raw = make_bundle(tmp_path, "4", 'raise RuntimeError("boom at import")\n').read_bytes()
    srv = FileServer(pki, raw)
    proxy = env.proxy(Blynk({TOKEN}, template_id=TMPL))
    cloud = env.cloud()
    cfg = e2e_config("blynk", proxy.url(), token=TOKEN, template_id=TMPL, template_name="OTA", ca="ca.der")
    board = HostBoard(tmp_path / "board", cfg, user_py=USER % ("v1", "1"), files={"ca.der": pki.ca_der.read_bytes()})
    run = Supervised(board)
    try:
        cloud.wait(lambda t, _: t == "info/mcu", console=board.console)
        note = json.dumps({"url": srv.url, "size": len(raw), "ver": "4"})
        cloud.send("downlink/ota/json", note)
        failed = cloud.wait(lambda t, p: t == "event/sys_ota" and p.startswith(b"OTA failed"), timeout=120,
                            console=board.console)
        assert b"rolled back" in failed[-1][1] and b"boom at import" in failed[-1][1], failed
        assert not info_ver(cloud, "4")
        slot = json.loads((board.state / "slot.json").read_text())
        assert slot["cur"] == "" and slot["bad"] == hashlib.sha256(raw).hexdigest()
        boots = run.boots
        cloud.send("downlink/ota/json", note)  # the shipment still stands: the device declines it
        board.wait_for_line("4 failed before: not tried again")
        assert run.boots == boots and "USER v1" in board.console()
    finally:
        run.stop()
        srv.stop()
