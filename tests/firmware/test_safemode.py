import os

from mptest import raises
from uplink import safemode


def _clean():
    for f in (safemode.PATH, safemode.PATH + ".tmp"):
        try:
            os.remove(f)
        except OSError:
            pass


def test_three_failed_boots_enter_safe_mode_then_allow_a_retry():
    _clean()
    for _ in range(safemode.LIMIT):
        safemode.enter_boot()
    with raises(safemode.SafeMode, "3 boots in a row"):
        safemode.enter_boot()
    # safe mode does not reset the board; the user's next reset gets a fresh try
    safemode.enter_boot()
    assert safemode.failed_boots() == 1
    _clean()


def test_healthy_boot_clears_the_count():
    _clean()
    safemode.enter_boot()
    safemode.enter_boot()
    safemode.healthy()
    safemode.enter_boot()
    safemode.enter_boot()
    assert safemode.failed_boots() == 2
    _clean()


def test_corrupt_counter_file_is_not_fatal():
    _clean()
    with open(safemode.PATH, "w") as f:
        f.write("{not json")
    safemode.enter_boot()
    assert safemode.failed_boots() == 1
    _clean()
