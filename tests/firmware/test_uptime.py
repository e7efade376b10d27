# Spans longer than the tick counter's range. On the ESP32 ticks_ms wraps at 2**30 ms and
# ticks_diff is right only within +-2**29 ms (~6.2 days; extmod/modtime.c time_ticks_diff,
# MICROPY_PY_TIME_TICKS_PERIOD = MP_SMALL_INT_POSITIVE_MASK + 1). The fake tick counter below
# wraps at this port's own period, so on the ESP32 model it crosses the real 2**30 wrap.
import asyncio
import time

import fake_hw
import fake_network as net
from uplink import app, board, log, wifi

fake_hw.install()

PERIOD = time.ticks_add(0, -1) + 1  # 2**30 on the ESP32 and its model
HOUR_MS = 3600 * 1000


class FakeTicks:
    """Stands in for `time` in one module: ticks_ms starts just before the wrap and moves
    only when the test says, or follows the real ticks plus a jump the test sets."""

    ticks_diff = staticmethod(time.ticks_diff)

    def __init__(self, start=None):
        self.t = start
        self.jump = 0

    def ticks_ms(self):
        if self.t is None:  # real ticks plus the jump
            return (time.ticks_ms() + self.jump) % PERIOD
        return self.t

    def advance(self, ms):
        self.t = (self.t + ms) % PERIOD


def with_fake_log_ticks(start):
    fake = FakeTicks(start)
    saved = (log.time, log._last, log._up_s, log._up_ms)
    log.time = fake
    log._last, log._up_s, log._up_ms = fake.ticks_ms(), 0, 0
    return fake, saved


def restore_log(saved):
    log.time, log._last, log._up_s, log._up_ms = saved


def test_uptime_counts_on_across_tick_wraps():
    fake, saved = with_fake_log_ticks(PERIOD - 1500)  # 1.5 s before the wrap
    try:
        fake.advance(2500)
        assert log.uptime_s() == 2 and log.uptime_ms() == 2500
        # 20 days, looked at every 5 minutes (App.supervise looks every 5 s): the tick
        # counter wraps once on the ESP32 (2**30 ms is 12.4 days); uptime never goes back
        last = 0
        for _ in range(20 * 24 * 12):
            fake.advance(300000)
            up = log.uptime_s()
            assert up == last + 300 or last == 0, (last, up)
            last = up
        assert log.uptime_s() == 20 * 86400 + 2
        # a plain ticks_diff over the same span, what the firmware used to do, is wrong on
        # the chip: within +-2**29 it cannot say 20 days
        if PERIOD == 2**30:
            assert time.ticks_diff(fake.ticks_ms(), PERIOD - 1500) // 1000 != 20 * 86400 + 2
    finally:
        restore_log(saved)


def test_health_uptime_and_log_times_after_a_week():
    fake, saved = with_fake_log_ticks(PERIOD - 60000)
    try:
        a = app.App({"telemetry": {"interval_ms": 0, "interval_s": 60, "health": True}},
                    board.load("host"))
        for _ in range(7 * 24):  # a week in hours
            fake.advance(HOUR_MS)
            log.uptime_s()
        h = a.telemetry.health()
        assert h["uptime_s"] == 7 * 86400, h
        lines = []
        import builtins

        real_print = builtins.print
        builtins.print = lambda s: lines.append(s)
        try:
            log.info("test", "a week later")
        finally:
            builtins.print = real_print
        assert lines and int(lines[0].split()[0]) == 7 * 86400, lines
    finally:
        restore_log(saved)


async def test_a_link_up_for_a_week_does_not_count_as_flapping():
    # A drop after a week of good link must reconnect at once, not back off as if the
    # access point were flapping (the old ticks_diff over the link's life said -6 days).
    net.reset()
    net.add_ap("home", "secret-home", -50)
    w = wifi.Wifi(board.load("esp32-devkitc"), [{"ssid": "home", "password": "secret-home"}], 1)
    w.POLL_MS, w.BACKOFF_MIN_MS, w.BACKOFF_MAX_MS, w.STABLE_MS, w.JOIN_POLL_MS = 10, 40, 200, 100, 5
    fake = FakeTicks()
    saved = wifi.time
    wifi.time = fake
    waits = []

    async def backoff(delay):
        waits.append(delay)

    w._backoff = backoff
    try:
        await w.connect()
        t = asyncio.create_task(w.run())
        await asyncio.sleep_ms(w.STABLE_MS + 5 * w.POLL_MS)  # the link counts as stable now
        fake.jump = (PERIOD >> 1) + 3600000  # ... and stays up a week (2**29 ms and more)
        net.drop()
        while w.drops < 1 or not w.connected:
            await asyncio.sleep_ms(5)
        assert waits == [], waits
        t.cancel()
    finally:
        wifi.time = saved
