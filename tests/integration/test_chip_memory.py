"""The firmware in the memory of the board its config names (the ESP32 model's -X chip, chosen
by HostBoard from device.board): health reports the IDF heap that mbedTLS and the GC heap's
growth share, and the console warns once when its largest block cannot hold a TLS handshake."""

from __future__ import annotations

import re

import pytest

from host_tools import hostboard
from tests.faultproxy import FaultProxy
from tests.integration.hostboard import HostBoard
from tests.integration.test_app_e2e import Cloud

HANDSHAKE_BYTES = 17 * 1024  # firmware/uplink/board.py
WARNING = "IDF heap: largest free block"


@pytest.fixture(autouse=True)
def _model():
    if not hostboard.esp32_model():
        pytest.skip(f"no ESP32 model: {hostboard.esp32_model_missing()}")


def config(broker, board: str) -> dict:
    return {"device": {"name": "chip", "board": board}, "ntp": {"servers": []},
            "platform": {"kind": "thingsboard", "url": broker.url("mqtt"), "token": "t"},
            "telemetry": {"interval_ms": 100, "health": True}}


def health(cloud: Cloud, n: int) -> list[dict]:
    assert cloud.wait(lambda: sum("idf_largest" in r["values"] for r in cloud.readings()) >= n)
    return [r["values"] for r in cloud.readings() if "idf_largest" in r["values"]]


def tls_board(tmp_path, broker, proxy: FaultProxy, board_id: str, **device) -> HostBoard:
    """A ThingsBoard device on `board_id`'s memory, over mqtts through `proxy`, started."""
    cfg = config(broker, board_id)
    cfg["device"].update(device)
    cfg["platform"].update(url=f"mqtts://localhost:{proxy.port}", ca="ca.der")
    return HostBoard(tmp_path / "board", cfg, files={"ca.der": broker.pki.ca_der.read_bytes()}).start()


def cut_ten_times(cloud: Cloud, board: HostBoard, proxy: FaultProxy) -> int:
    """Cut the connection after each handshake (and a reading after it), ten times: how many
    times the board connected again, each within 30 s (it stops at the first that does not)."""
    for n in range(1, 12):
        if not cloud.wait(lambda n=n: sum("I mqtt: connected" in ln for ln in list(board.lines)) >= n, 30):
            return max(n - 2, 0)
        seen = len(health(cloud, 1))
        assert cloud.wait(lambda s=seen: len(health(cloud, 1)) > s, 10)  # a reading after the handshake
        proxy.cut_all()
    return 10


@pytest.mark.timeout(90)
def test_an_s3_runs_in_its_chip_memory_and_health_reports_its_idf_heap(tmp_path, broker):
    cloud = Cloud(broker.ports["mqtt"], ["v1/devices/me/telemetry"])
    board = HostBoard(tmp_path / "board", config(broker, "esp32-s3")).start()
    try:
        assert board.chip == "esp32s3"
        got = health(cloud, 3)
        # the S3's pool (tools/esp32-model/README.md: 287 KB less the GC heap and Wi-Fi)
        assert all(HANDSHAKE_BYTES < v["idf_largest"] <= v["idf_free"] < 287312 for v in got), got
        assert WARNING not in board.console()
    finally:
        board.stop()
        cloud.close()


@pytest.mark.timeout(90)
def test_a_devkitc_whose_gc_heap_took_the_idf_heap_warns_once(tmp_path, broker):
    # user.py holds 20 KB more: the GC heap grows into the IDF heap's last big block (40 KB more
    # and the firmware cannot start at all)
    cloud = Cloud(broker.ports["mqtt"], ["v1/devices/me/telemetry"])
    board = HostBoard(tmp_path / "board", config(broker, "esp32-devkitc"),
                      user_py="_hog = bytearray(20000)\ndef read():\n    return {}\n").start()
    try:
        assert board.chip == "esp32"
        got = health(cloud, 5)
        assert got[-1]["idf_largest"] < HANDSHAKE_BYTES, got
        assert board.console().count(WARNING) == 1, board.console()
    finally:
        board.stop()
        cloud.close()


@pytest.mark.timeout(180)
def test_a_c3_over_tls_reconnects_ten_times_with_room_for_the_next_handshake(tmp_path, broker):
    # the one-TLS-cloud goal (>= 16 KB left after each handshake, none failing for memory) as
    # an esp32-c3 meets it; an esp32-devkitc does not yet (make bench BENCH_ARGS=firmware)
    proxy = FaultProxy(broker.ports["mqtts"])
    cloud = Cloud(broker.ports["mqtt"], ["v1/devices/me/telemetry"])
    board = tls_board(tmp_path, broker, proxy, "esp32-c3")
    try:
        assert cut_ten_times(cloud, board, proxy) == 10, board.console()
        got = health(cloud, 1)
        assert min(v["idf_largest"] for v in got) >= 16 * 1024, got
        console = "\n".join(board.lines)  # all of it (console() is the last 200 lines)
        assert "ENOMEM" not in console and "not correctly signed" not in console, board.console()
        assert WARNING not in console
    finally:
        board.stop()
        cloud.close()
        proxy.close()


ROMFS_WARNING = "device.romfs is set, but the firmware runs from"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("romfs", [False, True])
def test_a_devkitc_over_tls_reconnects_only_with_its_firmware_in_romfs(tmp_path, broker, romfs):
    # the firmware's bytecode in the GC heap (a stock image) leaves it ~6 KB short of its
    # 112 KB after one growth: at a reconnect it grows again into the IDF heap the handshake
    # needs (make bench BENCH_ARGS="firmware chip"). In ROMFS it stays in flash.
    proxy = FaultProxy(broker.ports["mqtts"])
    cloud = Cloud(broker.ports["mqtt"], ["v1/devices/me/telemetry"])
    board = tls_board(tmp_path, broker, proxy, "esp32-devkitc", romfs=romfs)
    try:
        reconnected = cut_ten_times(cloud, board, proxy)
        console = "\n".join(board.lines)
        failed = console.count("ENOMEM") + console.count("not correctly signed")
        if romfs:
            assert (reconnected, failed) == (10, 0), board.console()
            assert ROMFS_WARNING not in console
        else:
            assert reconnected < 10 and failed > 0, board.console()
    finally:
        board.stop()
        cloud.close()
        proxy.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("key, copy, runs_from, not_from", [
    ("romfs", True, "runs from uplink", "not ROMFS"),
    ("frozen", False, "build/host-mpy/uplink", "not the image's frozen package"),
])
def test_the_firmware_on_the_filesystem_of_a_romfs_or_frozen_device_warns_at_boot(
        tmp_path, broker, key, copy, runs_from, not_from):
    # a copy of uplink/ on the filesystem (an OTA slot's, one left by hand) comes first on
    # sys.path, or the image has no frozen package: the board runs, with the bytecode in its
    # heap, and says so
    import shutil

    from tests.integration import mpy

    cloud = Cloud(broker.ports["mqtt"], ["v1/devices/me/telemetry"])
    cfg = config(broker, "esp32-s3")
    cfg["device"][key] = True
    board = HostBoard(tmp_path / "board", cfg)
    if copy:
        shutil.copytree(mpy.compiled_firmware() / "uplink", board.state / "uplink")
    board.start()
    try:
        health(cloud, 1)
        line = board.wait_for_line(f"W boot: device.{key} is set, but the firmware runs from ")
        assert f"{runs_from}, {not_from}" in line, line
    finally:
        board.stop()
        cloud.close()


@pytest.mark.timeout(240)
def test_a_c3_with_its_firmware_in_romfs_reconnects_two_tls_clouds(tmp_path, broker):
    # what lets config.tls_refusal take two TLS clouds on an esp32-c3 with device.romfs: its
    # GC heap stays in the first 64 KB area, and both sessions find their blocks at every
    # reconnect (a stock C3's cannot: make bench BENCH_ARGS="firmware chip")
    from tests.integration.test_two_clouds import USER, two_cloud_config
    from tests.ledger import Observer

    proxy = FaultProxy(broker.ports["mqtts"])
    url = f"mqtts://localhost:{proxy.port}"
    cfg = two_cloud_config(url, url, interval_ms=250)
    cfg["device"].update(board="esp32-c3", romfs=True)
    for p in cfg["platforms"]:
        p["ca"] = "ca.der"
    cfg["platforms"][0]["client_rpc"] = False  # one broker plays both clouds
    cfg["platforms"][1]["client_id"] = "two-cloud-blynk"
    board = HostBoard(tmp_path / "board", cfg, user_py=USER, files={"ca.der": broker.pki.ca_der.read_bytes()}).start()

    def connects() -> int:
        return sum(bool(re.search(r" I mqtt[^:]*: connected", ln)) for ln in list(board.lines))

    try:
        for n in range(1, 7):
            assert Observer.wait(lambda n=n: connects() >= 2 * n, 45), board.console()
            proxy.cut_all()
        console = "\n".join(board.lines)
        assert "ENOMEM" not in console and "not correctly signed" not in console, board.console()
    finally:
        board.stop()
        proxy.close()
