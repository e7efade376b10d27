# Readings taken before the clock is known (uplink.boots): they reach the cloud with a real
# timestamp once it is, also after a power cut, and the publisher holds this boot's readings
# until then. Uptime comes from a fake tick counter (log.time), so the arithmetic is exact.
import asyncio
import json
import time

import outbox_util
from uplink import app, board, boots, log
from uplink.clock import Clock
from uplink.outbox import Outbox
from uplink.publisher import Publisher

T0 = 1767268800000  # 2026-01-01T12:00:00Z


class Ticks:
    ticks_diff = staticmethod(time.ticks_diff)

    def __init__(self):
        self.t = 0

    def ticks_ms(self):
        return self.t


def new_boot(ticks):
    # a power-on: uptime starts again from zero
    ticks.t = 0
    log._last, log._up_s, log._up_ms = 0, 0, 0


def setup():
    ticks = Ticks()
    saved = (log.time, log._last, log._up_s, log._up_ms)
    log.time = ticks
    new_boot(ticks)
    d = outbox_util.tmpdir("boots")
    return ticks, saved, d


def teardown(saved, d):
    log.time, log._last, log._up_s, log._up_ms = saved
    outbox_util.rmtree(d)


def capture(fn):
    import builtins

    lines = []
    real = builtins.print
    builtins.print = lambda s: lines.append(s)
    try:
        fn()
    finally:
        builtins.print = real
    return lines


def test_readings_before_the_first_sync_get_their_real_time():
    ticks, saved, d = setup()
    try:
        b = boots.Boots(d + "/boots.json")
        ticks.t = 5000
        r1 = b.mark({"values": {"a": 1}}, None)
        ticks.t = 65000
        r2 = b.mark({"values": {"a": 2}}, None)
        assert "ts" not in r1 and r1["boot"] == b.n and r1["up"] == 5000
        assert b.stamp(dict(r1), None) is False  # this boot, clock unknown: wait
        ticks.t = 125000  # the clock becomes known two minutes after boot
        now = T0 + 125000
        assert b.stamp(r1, now) and b.stamp(r2, now)
        assert (r1["ts"], r2["ts"]) == (T0 + 5000, T0 + 65000)
        assert "boot" not in r1 and "up" not in r1
        assert b.mark({"values": {}}, now)["ts"] == now
    finally:
        teardown(saved, d)


def test_a_power_cut_before_sending_keeps_the_exact_times():
    ticks, saved, d = setup()
    try:
        path = d + "/boots.json"
        b1 = boots.Boots(path)
        ticks.t = 1000
        r = b1.mark({"values": {"a": 1}}, None)
        ticks.t = 61000
        b1.tick(T0 + 61000)  # boot 1 learnt the time, then lost power with r unsent
        new_boot(ticks)
        b2 = boots.Boots(path)
        assert b2.n == b1.n + 1
        lines = capture(lambda: b2.stamp(r, None))
        assert r["ts"] == T0 + 1000 and lines == [], (r, lines)
    finally:
        teardown(saved, d)


def test_a_boot_that_never_synced_is_stamped_from_the_last_known_time():
    ticks, saved, d = setup()
    try:
        path = d + "/boots.json"
        b1 = boots.Boots(path)
        ticks.t = 2 * 3600 * 1000
        b1.tick(T0)  # boot 1: time known, alive at T0
        new_boot(ticks)
        b2 = boots.Boots(path)  # boot 2: offline, never learns the time
        got = []
        for i in range(3):
            ticks.t = 1000 + i * 60000
            got.append(b2.mark({"values": {"i": i}}, None))
        new_boot(ticks)
        b3 = boots.Boots(path)
        lines = capture(lambda: [b3.stamp(r, T0 + 86400000) for r in got])
        ts = [r["ts"] for r in got]
        # no earlier than the last known time, one per reading, in order
        assert ts == [T0 + 1000, T0 + 61000, T0 + 121000], ts
        assert len(lines) == 1 and "boot %d" % b2.n in lines[0] and "before any clock sync" in lines[0], lines
    finally:
        teardown(saved, d)


def test_no_time_known_at_all_goes_without_one_when_final():
    ticks, saved, d = setup()
    try:
        b = boots.Boots(d + "/boots.json")  # a new board, offline from the start
        r = b.mark({"values": {}}, None)
        assert b.stamp(r, None) is False
        assert b.stamp(r, None, final=True) and r["ts"] is None and "up" not in r
    finally:
        teardown(saved, d)


def test_a_lost_boots_file_starts_over():
    ticks, saved, d = setup()
    try:
        path = d + "/boots.json"
        with open(path, "w") as f:
            f.write("{not json")
        b = boots.Boots(path)
        assert b.n == 1
        with open(path) as f:
            assert json.load(f)["n"] == 1
    finally:
        teardown(saved, d)


class Client:
    is_connected = True
    window = 8
    connections = 1

    def __init__(self):
        self.sent = []

    async def publish(self, topic, payload, qos=0, wait=True):
        self.sent.append(json.loads(payload))
        return len(self.sent)


class Adapter:
    async def ready(self, client):  # (platforms.Base.ready: no session rules here)
        return None

    def encode(self, readings):
        return [("t", json.dumps(r).encode(), 1) for r in readings]


async def test_publisher_holds_this_boots_readings_until_the_clock_is_known():
    ticks, saved, d = setup()
    try:
        b = boots.Boots(d + "/boots.json")
        now = [None]
        ob = Outbox(d + "/ob", 16384)
        c = Client()
        sent_before = []  # what was sent before each stamp() call

        def stamp(r, final=False):
            sent_before.append(list(c.sent))
            if len(sent_before) == 2:  # the publisher is back for the held reading:
                ticks.t = 10000
                now[0] = T0 + 10000  # e.g. ThingsBoard's getTime answer arrived
            return b.stamp(r, now[0], final)

        p = Publisher(ob, Adapter(), c, stamp=stamp)
        ticks.t = 3000
        ob.put(json.dumps(b.mark({"values": {"a": 1}}, None)).encode())
        task = asyncio.create_task(p.run())
        while not c.sent:
            await asyncio.sleep_ms(50)
        # the sentinel: the second stamp() call, the publisher's retry of the same reading;
        # whatever its first try sent went out before it
        assert sent_before[1] == [], sent_before  # held: this boot's reading had no time yet
        assert c.sent == [{"ts": T0 + 3000, "values": {"a": 1}}], c.sent
        task.cancel()
    finally:
        teardown(saved, d)


def test_the_app_marks_readings_and_stamps_them_once_the_cloud_gives_the_time():
    ticks, saved, d = setup()
    try:
        bd = board.load("host")
        bd.set_rtc(946684800)  # fresh from power-on: the RTC says 2000
        a = app.App({"telemetry": {"interval_ms": 0, "interval_s": 60, "health": False}}, bd)
        a.clock = Clock(bd, [])
        a.boots = boots.Boots(d + "/boots.json")
        ticks.t = 4000
        r = a.telemetry.take_reading()
        assert r.get("ts") is None and r["up"] == 4000, r
        assert a.telemetry.stamp(r) is False
        ticks.t = 9000
        assert a.clock.set_from_cloud(T0)  # ThingsBoard getTime / Blynk utc over plain TCP
        assert a.telemetry.stamp(r) and abs(r["ts"] - (T0 - 5000)) < 1000, r
    finally:
        teardown(saved, d)
