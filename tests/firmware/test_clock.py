import asyncio
import struct

import fake_hw
from mptest import env, raises
from uplink import board, clock
from uplink.clock import Clock, ClockError
from wallclock import unix_ms as pc_ms

NEEDS = ("ntp",)
HOST = env("NTP_HOST", "127.0.0.1")
OK = "%s:%s" % (HOST, env("NTP_PORT"))
OFFSET = int(env("NTP_OFFSET_MS", "0"))


def srv(kind):
    return "%s:%s" % (HOST, env("NTP_%s_PORT" % kind.upper()))


def board_in_2000():
    # a board fresh from power-on: its RTC says 2000-01-01
    b = board.load("host")
    b.set_rtc(946684800)
    return b


async def test_sync_from_loopback_server_sets_the_board_clock():
    b = board_in_2000()
    c = Clock(b, [OK], timeout_ms=2000)
    assert not c.valid() and c.now_ms() is None
    ms = await c.sync()
    assert c.valid() and c.synced
    expect = pc_ms() + OFFSET
    assert abs(c.now_ms() - expect) < 1000, (c.now_ms(), expect)
    assert abs(ms - expect) < 1000
    assert abs(b.time_ms() - expect) < 1000  # the board's clock itself moved
    assert c.correction_ms > 20 * 365 * 86400 * 1000


async def test_falls_through_bad_servers_to_a_good_one():
    b = board_in_2000()
    c = Clock(b, [srv("silent"), srv("garbage"), srv("kod"), OK], timeout_ms=300)
    await c.sync()
    assert abs(c.now_ms() - (pc_ms() + OFFSET)) < 1000


async def test_every_failure_named():
    bad = [srv(k) for k in ("silent", "garbage", "kod", "unsynced", "old", "wrong_nonce")]
    c = Clock(board_in_2000(), bad + ["no-such-host.invalid"], timeout_ms=300)
    with raises(ClockError) as r:
        await c.sync()
    msg = str(r.value)
    for s in bad:
        assert s in msg, (s, msg)
    assert srv("silent") + ": no answer in 300 ms" in msg, msg
    assert srv("kod") + ": kiss-o'-death RATE" in msg, msg
    assert srv("unsynced") + ": server not synchronised" in msg, msg
    assert srv("old") + ": implausible year 1999" in msg, msg
    assert srv("wrong_nonce") + ": reply to another request" in msg, msg
    assert "no-such-host.invalid: cannot resolve" in msg, msg
    assert not c.valid() and c.now_ms() is None
    assert c.last_error and srv("kod") in c.last_error


async def test_no_servers():
    with raises(ClockError, "no NTP servers"):
        await Clock(board_in_2000(), []).sync()


async def test_wait_valid_and_run_resyncs():
    b = board_in_2000()
    c = Clock(b, [OK], timeout_ms=1000, resync_s=1)
    assert await c.wait_valid(50) is False
    task = asyncio.create_task(c.run())
    assert await c.wait_valid(3000) is True
    assert abs(c.now_ms() - (pc_ms() + OFFSET)) < 1000
    b.set_rtc(1000000000)  # the clock goes wrong (2001) ...
    await asyncio.sleep_ms(1600)
    assert abs(b.time_ms() - (pc_ms() + OFFSET)) < 1000  # ... and the re-sync fixes it
    task.cancel()


async def test_run_keeps_trying_while_unsynced():
    c = Clock(board_in_2000(), [srv("silent")], timeout_ms=100, resync_s=3600)
    c.RETRY_MS = 100
    task = asyncio.create_task(c.run())
    await asyncio.sleep_ms(400)
    assert not c.valid() and "no answer" in c.last_error
    c.servers = [OK]  # the network comes back: a backoff retry succeeds
    assert await c.wait_valid(5000)
    task.cancel()


async def test_blocked_ntp_is_said_with_servers_and_duration():
    import builtins

    c = Clock(board_in_2000(), [srv("silent")], timeout_ms=50, resync_s=3600)
    c.RETRY_MS = 50
    c.BLOCKED_SAY_S = 0  # every retry, for the test
    lines = []
    real = builtins.print
    builtins.print = lambda s: lines.append(s)
    try:
        task = asyncio.create_task(c.run())
        for _ in range(100):  # a few retries at most
            if len(lines) >= 2:
                break
            await asyncio.sleep_ms(20)
        task.cancel()
    finally:
        builtins.print = real
    assert "no time from any server" in lines[0], lines
    assert "NTP blocked? no time from %s for " % srv("silent") in lines[1], lines
    assert "UDP port 123" in lines[1], lines


def test_a_present_rtc_counts_as_valid_before_sync():
    # the host board's clock is the PC's; an ESP32 RTC survives a soft reset
    c = Clock(board.load("host"), [OK])
    assert c.valid() and abs(c.now_ms() - pc_ms()) < 1000


async def test_esp32_board_gets_its_rtc_set():
    fake_hw.install()
    b = board.load("esp32-devkitc")
    c = Clock(b, [OK])
    await c.sync()
    t = fake_hw.machine.rtc
    want = board.gmtime((pc_ms() + OFFSET) // 1000)
    assert t[:3] == want[:3] and t[3] == want[6], (t, want)
    assert abs((t[4] * 3600 + t[5] * 60 + t[6]) - (want[3] * 3600 + want[4] * 60 + want[5])) <= 1


def test_iso():
    assert clock.iso(1767268800000) == "2026-01-01T12:00:00Z"
    assert clock.iso(1767268800999) == "2026-01-01T12:00:00Z"
    assert clock.iso(951782400000) == "2000-02-29T00:00:00Z"


def test_server_port_parsing():
    assert clock._split("pool.ntp.org") == ("pool.ntp.org", 123)
    assert clock._split("127.0.0.1:1234") == ("127.0.0.1", 1234)


def _packet(secs, nonce, mode=4, stratum=2, leap=0, version=4):
    p = bytearray(48)
    p[0] = (leap << 6) | (version << 3) | mode
    p[1] = stratum
    p[24:32] = nonce
    struct.pack_into(">II", p, 32, secs, 0)
    struct.pack_into(">II", p, 40, secs, 0x80000000)
    return bytes(p)


def test_check_packet():
    n = b"12345678"
    # 2026-01-01T12:00:00Z, .5 s
    assert clock.check(_packet(1767268800 + 2208988800, n), n)[1] == 1767268800500
    # after the NTP era rollover (2036-02-07T06:28:16Z): seconds wrap to small numbers
    assert clock.check(_packet(100, n), n)[1] == (0x100000000 + 100 - 2208988800) * 1000 + 500
    for pkt, why in (
        (_packet(3976257600, n)[:40], "short"),
        (_packet(3976257600, n, mode=3), "mode 3"),
        (_packet(3976257600, n, version=0), "version 0"),
        (_packet(3976257600, n, stratum=0), "kiss-o'-death"),
        (_packet(3976257600, n, leap=3), "not synchronised"),
        (_packet(3976257600, b"87654321"), "another request"),
        (_packet(3000000000, n), "implausible year 1995"),
        (_packet(0, n)[:40] + bytes(8), "no transmit time"),
    ):
        with raises(ValueError, why):
            clock.check(pkt, n)
