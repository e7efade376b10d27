# The PC's real time as unix epoch milliseconds, for firmware tests that compare a clock with
# it. Worked out from the calendar date gmtime() gives, not from an epoch constant, so it is
# right whatever epoch the port counts from (1970 on the PyPI unix port; 2000 on the ESP32
# and the ESP32 model: ports/esp32/modtime.c mp_time_time_get -> gettimeofday, which
# machine_rtc.c sets through timeutils_seconds_since_epoch, and MICROPY_EPOCH_IS_1970 is
# never set in ports/esp32/mpconfigport.h) and independent of uplink.board's own arithmetic.
import time


def _days_from_civil(y, m, d):
    # Howard Hinnant's days_from_civil: days since 1970-01-01 of a proleptic Gregorian date
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def unix_ms():
    ns = time.time_ns()  # one reading: the seconds and their fraction agree
    t = time.gmtime(ns // 1000000000)
    s = _days_from_civil(t[0], t[1], t[2]) * 86400 + t[3] * 3600 + t[4] * 60 + t[5]
    return s * 1000 + ns // 1000000 % 1000
