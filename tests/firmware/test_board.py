import os
import sys
import time

import fake_hw
import fake_network
from mptest import raises
from uplink import board

fake_hw.install()


def test_profiles_pick_backend():
    assert board.load("host").backend == "host"
    b = board.load("esp32-devkitc")
    assert b.backend == "esp32" and b.led_pin == 2 and b.has_temperature
    assert board.load("esp32-c3").led_pin == 8
    assert board.load("esp32-s3").name == "esp32-s3"
    # unknown id: the port we run on (unix here), no LED
    u = board.load("something-else")
    assert u.backend == "host" and u.led_pin is None


def test_host_wlan_is_connected():
    w = board.load("host").wlan()
    assert w.isconnected() and w.status() == 1010
    assert isinstance(w.status("rssi"), int)
    assert w.ifconfig()[0] == "127.0.0.1"
    assert board.load("host").wlan() is not None


def test_host_clock_offset():
    b = board.load("host")
    now = b.time_ms()
    assert abs(now - time.time() * 1000) < 2000  # the OS clock (unix port: 1970 epoch)
    b.set_rtc(1893456000, 250)  # 2030-01-01T00:00:00.250Z
    t = b.time_ms()
    assert 1893456000250 <= t < 1893456000250 + 1000, t
    b.set_rtc(1700000000)
    assert abs(b.time_ms() - 1700000000000) < 1000


def test_host_unique_id_is_stable_per_state_dir():
    d = "/tmp/uplink-board-test-%d" % time.ticks_cpu()
    os.mkdir(d)
    cwd = os.getcwd()
    os.chdir(d)
    try:
        a = board.load("host").unique_id()
        assert len(a) == 12 and int(a, 16) >= 0
        assert board.load("host").unique_id() == a
        os.remove(board.ID_FILE)
        assert board.load("host").unique_id() != a
        os.remove(board.ID_FILE)
    finally:
        os.chdir(cwd)
        os.rmdir(d)


def test_host_reset_exits_with_restart_code():
    with raises(SystemExit) as r:
        board.load("host").reset()
    assert r.value.args[0] == board.RESET_EXIT


def test_host_misc():
    b = board.load("host")
    w = b.watchdog(5000)
    w.feed()
    assert b.watchdog(1000) is w
    b.led(True)
    assert b.chip_temperature() is None
    assert b.mem_free() > 0
    assert b.reset_cause() == "power_on"


def test_esp32_backend_uses_hardware():
    fake_network.reset()
    b = board.load("esp32-devkitc")
    assert b.unique_id() == "240ac412abcd"
    w = b.wlan()
    assert isinstance(w, fake_network.WLAN) and b.wlan() is w
    b.led(True)
    assert fake_hw.machine.pins[2] == 1
    b.led(False)
    assert fake_hw.machine.pins[2] == 0
    assert abs(b.chip_temperature() - 50.0) < 0.01  # 122 F
    fake_hw.esp32.mcu_temperature = lambda: 41.5  # S3/C3 API wins where present
    assert b.chip_temperature() == 41.5
    del fake_hw.esp32.mcu_temperature
    wdt = b.watchdog(8000)
    assert wdt.timeout == 8000 and b.watchdog(8000) is wdt
    assert len(fake_hw.machine.wdts) == 1
    with raises(fake_hw.Reset):
        b.reset()


def test_esp32_set_rtc_and_reset_cause():
    b = board.load("esp32-c3")
    b.set_rtc(1767268800, 500)  # 2026-01-01T12:00:00.5Z, a Thursday
    assert fake_hw.machine.rtc == (2026, 1, 1, 3, 12, 0, 0, 500000), fake_hw.machine.rtc
    fake_hw.machine.cause = fake_hw.machine.WDT_RESET
    assert b.reset_cause() == "watchdog"
    fake_hw.machine.cause = fake_hw.machine.PWRON_RESET
    assert b.reset_cause() == "power_on"
    fake_hw.machine.cause = fake_hw.machine.DEEPSLEEP_RESET
    assert b.reset_cause() == "deepsleep"


def test_host_board_never_imports_esp32_modules():
    for m in ("network", "machine", "esp32"):
        sys.modules.pop(m, None)
    b = board.load("host")
    b.wlan(), b.watchdog(100), b.led(1), b.chip_temperature(), b.time_ms(), b.set_rtc(1800000000)
    b.reset_cause(), b.mem_free()
    for m in ("network", "machine", "esp32"):
        assert m not in sys.modules, m
    fake_hw.install()


def test_memory_health_keys():
    assert list(board.load("host").memory()) == ["gc_free"]
    m = board.load("esp32-devkitc").memory()
    # the GC heap, and the IDF heap that mbedTLS and the GC heap's growth draw on
    assert m["gc_free"] > 0
    assert m["idf_free"] == 35716 and m["idf_largest"] == 35512, m
