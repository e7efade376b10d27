import os
import sys
import time

import fake_hw
import fake_network
from mptest import raises
from uplink import board
from wallclock import unix_ms

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
    assert abs(now - unix_ms()) < 2000  # the OS clock, as unix time on a port of either epoch
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
    b = board.load("host")  # its watchdog would end this process: tested in children below
    b.led(True)
    assert b.chip_temperature() is None
    assert b.memory()["gc_free"] > 0
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
    # one per chip: armed by main.py for a trial (another Board), it is the app's; its
    # supervisor gives it its own timeout
    other = board.load("esp32-c3")
    assert other.armed_watchdog() is wdt and other.watchdog(30000) is wdt and wdt.timeout == 30000
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
    b.wlan(), b.led(1), b.chip_temperature(), b.time_ms(), b.set_rtc(1800000000)
    b.reset_cause(), b.memory()
    for m in ("network", "machine", "esp32"):
        assert m not in sys.modules, m
    fake_hw.install()


# -- the host board's watchdog behaves like the ESP32's (ports/esp32/machine_wdt.c) ---------
SOFT_RESET = """
import gc, sys, time
from uplink import board
w = board.load("host").watchdog(300)
assert not hasattr(w, "deinit") and not hasattr(w, "stop")
assert "machine" not in sys.modules and "esp32" not in sys.modules
# a soft reset: all of the program's state goes, the IDF's task watchdog stays
for k in list(sys.modules):
    if k.startswith("uplink"):
        del sys.modules[k]
del board, w
gc.collect()
"""


def _child(script, name):
    # the bite kills the whole process: it has to be another one
    d = "wdt-%s-%d" % (name, time.ticks_cpu() & 0xFFFFFF)
    os.mkdir(d)
    with open(d + "/child.py", "w") as f:
        f.write(script)
    os.system('cd %s && "%s" child.py > out.txt 2>&1' % (d, sys.executable))
    with open(d + "/out.txt") as f:
        out = f.read()
    try:
        with open(d + "/reset_cause") as f:
            cause = f.read().strip()
    except OSError:
        cause = None
    return d, out, cause


def test_host_watchdog_cannot_be_stopped_and_bites_after_a_soft_reset():
    d, out, cause = _child(SOFT_RESET + "time.sleep(5)\nprint('not bitten')\n", "bite")
    assert "not bitten" not in out and cause == "watchdog", (out, cause)
    # the next boot in that state directory is told why
    _, out, cause = _child("from uplink import board\nprint(board.load('host').reset_cause())\n", "next")
    assert "power_on" in out  # another directory: a fresh board
    os.rename(d + "/child.py", d + "/old.py")
    with open(d + "/child.py", "w") as f:
        f.write("from uplink import board\nprint(board.load('host').reset_cause())\n")
    os.system('cd %s && "%s" child.py > out.txt 2>&1' % (d, sys.executable))
    with open(d + "/out.txt") as f:
        assert f.read().strip() == "watchdog"


def test_host_watchdog_is_one_per_process_and_can_be_fed_after_a_soft_reset():
    # as machine.WDT(timeout=...) after a soft reset: the same watchdog, still armed, fed on
    script = SOFT_RESET + (
        "from uplink import board\n"
        "w = board.load('host').watchdog(300)\n"
        "for _ in range(30):\n    w.feed()\n    time.sleep_ms(50)\n"
        "print('alive')\n")
    _, out, cause = _child(script, "fed")
    assert "alive" in out and cause is None, (out, cause)


def test_host_reset_tells_the_next_boot_it_was_a_hard_reset():
    d = "cause-%d" % (time.ticks_cpu() & 0xFFFFFF)
    os.mkdir(d)
    os.chdir(d)
    try:
        with raises(SystemExit):
            board.load("host").reset()
        with open("reset_cause") as f:
            assert f.read() == "hard"  # machine.reset() is ESP_RST_SW: HARD on the ESP32
    finally:
        os.chdir("..")


def test_default_board_is_the_port_the_firmware_runs_on():
    from uplink import config

    assert board.DEFAULT == "host"  # the unix port
    cfg = config.parse('{"device": {"name": "x"}, "platform": {"kind": "k"}}', {"k": {}})
    assert cfg["device"]["board"] == board.DEFAULT
    assert board.load("esp32").backend == ("esp32" if sys.platform == "esp32" else "host")


def test_memory_health_keys():
    # no IDF heap: the PyPI port has no esp32 module, the ESP32 model without -X chip no regions
    fake = sys.modules.pop("esp32")
    try:
        assert list(board.load("host").memory()) == ["gc_free"]
    finally:
        sys.modules["esp32"] = fake
    m = board.load("esp32-devkitc").memory()
    # the GC heap, and the IDF heap that mbedTLS and the GC heap's growth draw on
    assert m["gc_free"] > 0
    assert m["idf_free"] == 35716 and m["idf_largest"] == 35512, m
