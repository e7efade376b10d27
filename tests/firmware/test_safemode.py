import json
import os

from mptest import raises
from uplink import safemode


def _clean():
    for f in (safemode.PATH, safemode.PATH + ".tmp", safemode.REASON, "config.json"):
        try:
            os.remove(f)
        except OSError:
            pass


def test_crash_exits_enter_safe_mode_then_allow_one_more_try():
    _clean()
    for i in range(safemode.LIMIT):
        safemode.enter_boot("hard")
        assert safemode.crashed("app crashed: RuntimeError: sensor bus dead %d" % i)
    with raises(safemode.SafeMode, "3 crash exits in a row; the last: app crashed: RuntimeError: sensor bus dead 2"):
        safemode.enter_boot("hard")
    # after safe mode's wait the app gets one try: one more crash is safe mode again
    safemode.enter_boot("hard")
    safemode.crashed("again")
    with raises(safemode.SafeMode, "last: again"):
        safemode.enter_boot("hard")
    _clean()


def test_power_on_resets_and_cloud_outages_do_not_count():
    _clean()
    for _ in range(10):  # brownouts, a router outage: boots without a crash exit
        safemode.enter_boot("power_on")
    safemode.enter_boot("soft")
    safemode.enter_boot("hard")
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


def test_healthy_run_clears_the_count_and_the_reason():
    _clean()
    safemode.crashed("x")
    safemode.crashed("y")
    safemode.note("3 crash exits in a row")
    assert safemode.last_reason() == "3 crash exits in a row"
    safemode.healthy()
    assert safemode.crashes() == 0 and safemode.last_reason() is None
    safemode.crashed("z")
    safemode.enter_boot("hard")
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
