# runner.run()'s boot flow on both backends: Ctrl-C with an armed ESP32 watchdog resets into the
# maintenance hold, safe mode waits and resets (feeding a watchdog armed before), unexpected
# errors at boot reset instead of leaving the board at the REPL.
import json
import os
import time

import fake_hw
from mptest import raises
from uplink import app, board, board_host, runner, safemode

fake_hw.install()
_main = app.App.main
# the pause before a crash exit's reset, shortened from 2 s (test_memory_error_at_boot_resets_and_counts
# checks it is kept): these tests crash the boot 8 times
runner.RESET_DELAY_MS = 50


def _clean():
    for f in (safemode.PATH, safemode.PATH + ".tmp", safemode.REASON, "config.json", runner.HOLD,
              board_host.CAUSE_FILE, board.RESET_MARK):
        try:
            os.remove(f)
        except OSError:
            pass
    app.App.main = _main
    fake_hw.machine.wdts[:] = []
    board._wdt[:] = []  # (the chip's, armed by any Board)
    fake_hw.machine.cause = fake_hw.machine.PWRON_RESET
    board_host._cause[:] = []


def _config(board_id):
    with open("config.json", "w") as f:
        json.dump({"device": {"name": "t", "board": board_id, "safe_mode_retry_s": 1},
                   "platform": {"kind": "thingsboard", "url": "mqtt://127.0.0.1:1", "token": "t"}}, f)


def _read(path):
    with open(path) as f:
        return f.read()


def test_ctrl_c_with_armed_esp32_watchdog_resets_into_the_hold():
    _clean()
    _config("esp32-devkitc")

    async def armed_then_interrupted(self):
        self.board.watchdog(30000)
        raise KeyboardInterrupt

    app.App.main = armed_then_interrupted
    with raises(fake_hw.Reset):
        runner.run()
    assert _read(runner.HOLD) == "ctrl-c"
    assert safemode.crashes() == 0  # a person stopping the app is no crash
    _clean()


def test_ctrl_c_before_the_watchdog_is_armed_returns_to_the_repl():
    _clean()
    _config("esp32-devkitc")

    async def interrupted(self):
        raise KeyboardInterrupt

    app.App.main = interrupted
    runner.run()
    assert runner.HOLD not in os.listdir()
    _clean()


def test_safe_mode_feeds_an_armed_watchdog_then_resets():
    _clean()
    _config("esp32-devkitc")
    b = board.load("esp32-devkitc")
    wdt = b.watchdog(30000)
    with raises(fake_hw.Reset):
        runner.safe_mode(b, "platform.token: refused")
    assert wdt.fed >= 1
    assert _read(safemode.REASON).strip() == "platform.token: refused"
    _clean()


def test_crash_loop_enters_safe_mode_which_resets_later():
    _clean()
    _config("esp32-devkitc")

    async def crash(self):
        raise RuntimeError("sensor bus dead")

    app.App.main = crash
    for _ in range(safemode.LIMIT):
        with raises(fake_hw.Reset):
            runner.run()
    assert safemode.crashes() == safemode.LIMIT

    async def must_not_start(self):
        raise AssertionError("the app started in safe mode")

    app.App.main = must_not_start
    with raises(fake_hw.Reset):  # safe mode: no app, a wait of safe_mode_retry_s, a reset
        runner.run()
    assert "3 crash exits in a row" in _read(safemode.REASON)
    assert fake_hw.machine.wdts == []
    _clean()


def test_panics_count_as_crashes_and_the_firmwares_own_resets_once():
    _clean()
    _config("esp32-devkitc")
    m = fake_hw.machine

    async def crash(self):
        raise RuntimeError("sensor bus dead")

    app.App.main = crash
    with raises(fake_hw.Reset):  # a crash exit: counted, then machine.reset(), marked
        runner.run()
    m.cause = m.HARD_RESET  # machine.reset() reads back as HARD (ports/esp32/modmachine.c)

    async def interrupted(self):
        raise KeyboardInterrupt

    app.App.main = interrupted
    runner.run()
    assert safemode.crashes() == 1  # the crash, not its reset too
    runner.run()  # HARD again, unmarked: the app died without a word (Guru Meditation)
    assert safemode.crashes() == 2
    with raises(fake_hw.Reset):  # a second panic in a row: safe mode
        runner.run()
    assert "HARD reset the firmware did not make" in _read(safemode.REASON)
    _clean()


def _boots_without_memory(n):
    """runner.run() n times with the config load out of memory (each boot ends in a reset,
    SystemExit on the host board); the last SystemExit."""
    load = runner.load_config

    def no_memory():
        raise MemoryError("memory allocation failed, allocating 1784 bytes")

    runner.load_config = no_memory
    try:
        for _ in range(n):
            with raises(SystemExit) as r:
                runner.run()
    finally:
        runner.load_config = load
    return r.value


def test_memory_error_at_boot_resets_and_counts():
    _clean()
    _config("host")
    t = time.ticks_ms()
    assert _boots_without_memory(1).args[0] == board.RESET_EXIT
    assert time.ticks_diff(time.ticks_ms(), t) >= runner.RESET_DELAY_MS  # not a spinning crash loop
    assert safemode.crashes() == 1
    _clean()


def test_memory_error_loading_the_config_at_every_boot_ends_in_safe_mode():
    # the platform module compiled from source did not fit at every boot: before, the crash
    # count was checked after the config was loaded, so it never was, and the board reset forever
    _clean()
    _config("host")
    _boots_without_memory(safemode.LIMIT)
    assert safemode.crashes() == safemode.LIMIT
    _boots_without_memory(1)  # safe mode: a wait, then a reset
    assert "3 crash exits in a row; the last: boot failed: MemoryError" in _read(safemode.REASON)
    _clean()


def test_os_error_at_boot_resets_after_the_safe_mode_wait():
    _clean()
    _config("host")
    with open(board_host.CAUSE_FILE, "w") as f:
        f.write("watchdog")  # so enter_boot has to store the count...
    os.mkdir(safemode.PATH + ".tmp")  # ...on a filesystem that refuses (as a full one does)
    try:
        with raises(SystemExit) as r:
            runner.run()
    finally:
        os.rmdir(safemode.PATH + ".tmp")
    assert r.value.args[0] == board.RESET_EXIT
    assert "could not be stored" in _read(safemode.REASON)
    assert _read(board_host.CAUSE_FILE) == "hard"  # the next boot is told: a reset, not power-on
    _clean()
