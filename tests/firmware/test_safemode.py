import json
import os

from mptest import raises
from uplink import board, safemode


def _clean():
    for f in (safemode.PATH, safemode.PATH + ".tmp", safemode.REASON, "config.json", board.RESET_MARK):
        try:
            os.remove(f)
        except OSError:
            pass


def _own_reset():
    """The boot after a reset the firmware made (Board.reset marks it): HARD on an ESP32."""
    board.Board("t").mark_reset()
    safemode.enter_boot("hard")


def test_crash_exits_enter_safe_mode_then_allow_one_more_try():
    _clean()
    for i in range(safemode.LIMIT):
        _own_reset()
        assert safemode.crashed("app crashed: RuntimeError: sensor bus dead %d" % i)
    with raises(safemode.SafeMode, "3 crash exits in a row; the last: app crashed: RuntimeError: sensor bus dead 2"):
        _own_reset()
    # after safe mode's wait the app gets one try: one more crash is safe mode again
    _own_reset()
    safemode.crashed("again")
    with raises(safemode.SafeMode, "last: again"):
        _own_reset()
    _clean()


def test_power_on_resets_and_cloud_outages_do_not_count():
    _clean()
    for _ in range(10):  # brownouts, a router outage: boots without a crash exit
        safemode.enter_boot("power_on")
    safemode.enter_boot("soft")
    _own_reset()  # a reboot command, an update, deploy's reset
    assert safemode.crashes() == 0
    _clean()


def test_watchdog_resets_count_as_crashes():
    _clean()
    safemode.enter_boot("watchdog")
    safemode.enter_boot("watchdog")
    assert safemode.crashes() == 2
    with raises(safemode.SafeMode, "watchdog reset"):
        safemode.enter_boot("watchdog")
    _clean()


def test_a_hard_reset_the_firmware_did_not_make_is_a_crash():
    # a panic (Guru Meditation, an IDF abort) reads back as HARD, as machine.reset() does
    # (ports/esp32/modmachine.c): only the mark tells them apart
    _clean()
    safemode.enter_boot("hard")
    safemode.enter_boot("hard")
    assert safemode.crashes() == 2
    with raises(safemode.SafeMode, "3 crash exits in a row; the last: HARD reset the firmware did not make: a panic"):
        safemode.enter_boot("hard")
    _clean()


def test_the_mark_counts_for_one_reset_only():
    _clean()
    _own_reset()
    safemode.enter_boot("hard")  # the next HARD reset, unmarked: a panic
    assert safemode.crashes() == 1
    board.Board("t").mark_reset()
    safemode.enter_boot("power_on")  # marked, but the power went first: the mark goes all the same
    safemode.enter_boot("hard")
    assert safemode.crashes() == 2 and board.RESET_MARK not in os.listdir()
    _clean()


def test_healthy_run_clears_the_count_and_the_reason():
    _clean()
    safemode.crashed("x")
    safemode.crashed("y")
    safemode.note("3 crash exits in a row")
    assert safemode.last_reason() == "3 crash exits in a row"
    safemode.healthy()
    assert safemode.crashes() == 0 and safemode.last_reason() is None
    safemode.crashed("z")
    _own_reset()
    assert safemode.crashes() == 1
    _clean()


def test_corrupt_counter_file_is_not_fatal():
    _clean()
    with open(safemode.PATH, "w") as f:
        f.write("{not json")
    safemode.enter_boot("power_on")
    assert safemode.crashes() == 0
    assert safemode.crashed("x") and safemode.crashes() == 1
    _clean()


def test_retry_period_comes_from_config_even_a_broken_one():
    _clean()
    assert safemode.retry_s() == safemode.RETRY_S
    with open("config.json", "w") as f:  # rejected by the checker (no platform), still read
        json.dump({"device": {"name": "x", "safe_mode_retry_s": 600}, "telemetri": {}}, f)
    assert safemode.retry_s() == 600
    for bad in (0, -5, "600", True, None):
        with open("config.json", "w") as f:
            json.dump({"device": {"safe_mode_retry_s": bad}}, f)
        assert safemode.retry_s() == safemode.RETRY_S, bad
    with open("config.json", "w") as f:
        f.write("\xff{")
    assert safemode.retry_s() == safemode.RETRY_S
    _clean()


def test_count_that_cannot_be_stored_is_reported():
    _clean()
    os.mkdir(safemode.PATH + ".tmp")  # the temp file cannot be written: like a full filesystem
    try:
        assert not safemode.crashed("x")
        with raises(OSError):
            safemode.enter_boot("watchdog")
    finally:
        os.rmdir(safemode.PATH + ".tmp")
    _clean()
