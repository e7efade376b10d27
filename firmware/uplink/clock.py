# Wall-clock time from SNTP (RFC 4330). TLS certificate checks and reading timestamps need
# the real date; the ESP32 wakes up in the year 2000. The clock asks its servers in turn,
# checks each answer (mode, version, leap, stratum, our nonce echoed back, year >= 2024),
# and sets the board's RTC (the host board keeps an offset instead of touching the PC).
#
# Integer milliseconds throughout: an ESP32 float is single precision and cannot hold an
# epoch. UDP over a non-blocking socket polled from asyncio (asyncio has no datagram streams).
import asyncio
import os
import random
import socket
import struct
import time

from uplink import log
from uplink.board import gmtime

NTP_DELTA = 2208988800  # seconds from 1900 (NTP) to 1970 (unix)
MIN_YEAR = 2024
VALID_MS = 1704067200000  # 2024-01-01T00:00:00Z
BACKOFF_MAX_S = 300


class ClockError(Exception):
    pass


def iso(ms):
    """Epoch milliseconds -> "2026-01-01T12:00:00Z"."""
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % gmtime(ms // 1000)[:6]


def _split(server):
    host, sep, port = server.rpartition(":")
    if sep and port.isdigit():
        return host, int(port)
    return server, 123


def _ntp_ms(buf, off):
    # 64-bit NTP timestamp at buf[off:] -> unix epoch ms. Seconds below 2^31 mean era 1
    # (after 2036-02-07), so this keeps working past the 32-bit rollover.
    s, f = struct.unpack_from(">II", buf, off)
    if s < 0x80000000:
        s += 0x100000000
    return (s - NTP_DELTA) * 1000 + ((f * 1000) >> 32)


def check(resp, nonce):
    """The server's transmit time (epoch ms) and receive time from an SNTP reply, or a
    ValueError saying what is wrong with it."""
    if len(resp) < 48:
        raise ValueError("short packet (%d bytes)" % len(resp))
    b0, stratum = resp[0], resp[1]
    leap, version, mode = b0 >> 6, (b0 >> 3) & 7, b0 & 7
    if mode != 4:
        raise ValueError("not a server reply (mode %d)" % mode)
    if not 1 <= version <= 4:
        raise ValueError("version %d" % version)
    if resp[24:32] != nonce:
        raise ValueError("reply to another request")
    if stratum == 0:
        code = bytes(resp[12:16])
        raise ValueError("kiss-o'-death %s" % (code.decode() if code.isalpha() else "code"))
    if leap == 3 or stratum > 15:
        raise ValueError("server not synchronised")
    if not any(resp[40:48]):
        raise ValueError("no transmit time")
    t2, t3 = _ntp_ms(resp, 32), _ntp_ms(resp, 40)
    if t3 < VALID_MS:
        raise ValueError("implausible year %d" % gmtime(t3 // 1000)[0])
    return t2, t3


class Clock:
    RETRY_MS = 2000  # first retry after a failed sync; doubles up to BACKOFF_MAX_S
    BLOCKED_SAY_S = 300  # while syncs fail, a console line this often
    # what the unknown time means for this app (set by uplink.startup.clock)
    blocked_hint = "; UDP port 123 must reach them"

    def __init__(self, board, servers, timeout_ms=2000, resync_s=3600):
        self.board = board
        self.servers = servers
        self.timeout_ms = timeout_ms
        self.resync_s = resync_s
        self.synced = False
        self.last_error = None
        self.correction_ms = 0  # what the last sync changed, for the log
        self._ev = asyncio.Event()
        self._req = bytearray(48)
        # An RTC already in the present (a soft reset or deep sleep on the ESP32, the PC's
        # clock on the host board) is good enough until the first sync.
        if board.time_ms() >= VALID_MS:
            self._ev.set()

    def valid(self):
        return self._ev.is_set()

    def now_ms(self):
        return self.board.time_ms() if self._ev.is_set() else None

    def iso(self, ms=None):
        return iso(self.board.time_ms() if ms is None else ms)

    async def wait_valid(self, timeout_ms=None):
        """Wait until the time is valid; False if timeout_ms passed first."""
        if timeout_ms is None:
            await self._ev.wait()
            return True
        try:
            await asyncio.wait_for_ms(self._ev.wait(), timeout_ms)
        except asyncio.TimeoutError:
            pass
        return self._ev.is_set()

    def set_from_cloud(self, ms):
        """A time from the platform (TB getTime, Blynk utc): good enough while SNTP has not
        answered yet, never over an SNTP sync. Returns whether it was taken."""
        if self.synced or ms < VALID_MS:
            return False
        self.board.set_rtc(ms // 1000, ms % 1000)
        self._ev.set()
        return True

    async def sync(self):
        """Set the clock from the first server that answers sensibly; ClockError naming
        every server's failure otherwise."""
        if not self.servers:
            raise ClockError("no NTP servers configured")
        why = []
        for server in self.servers:
            try:
                ms = await self._query(server)
            except (OSError, ValueError) as e:
                why.append("%s: %s" % (server, _reason(e)))
                continue
            self.correction_ms = ms - self.board.time_ms()
            self.board.set_rtc(ms // 1000, ms % 1000)
            self.synced = True
            self.last_error = None
            self._ev.set()
            return ms
        self.last_error = "; ".join(why)
        raise ClockError("no time from any server: " + self.last_error)

    async def run(self):
        """Sync, then again every resync_s; while it fails, retry sooner with backoff."""
        failing = None  # log.uptime_s() when the syncs started failing
        said = 0
        delay = self.RETRY_MS
        while True:
            try:
                ms = await self.sync()
                if failing is not None or abs(self.correction_ms) > 1000:
                    log.info("clock", "%s (corrected by %d s)" % (iso(ms), self.correction_ms // 1000))
                failing = None
                delay = self.RETRY_MS
                await asyncio.sleep(self.resync_s)
            except Exception as e:  # ClockError; a MemoryError must not end the task either
                now = log.uptime_s()
                if failing is None:
                    failing = said = now
                    log.warn("clock", str(e) if isinstance(e, ClockError) else "sync failed: %r" % e)
                elif now - said >= self.BLOCKED_SAY_S:  # not at every retry: every few minutes
                    said = now
                    log.warn("clock", "NTP blocked? no time from %s for %d s (%s)%s" % (
                        ", ".join(self.servers), now - failing, self.last_error or e,
                        "" if self.synced else self.blocked_hint))
                # jitter: boards rebooted by one power cut do not all ask at once
                await asyncio.sleep_ms(delay + random.getrandbits(16) % (delay // 2 + 1))
                delay = min(delay * 2, BACKOFF_MAX_S * 1000, self.resync_s * 1000)

    async def _query(self, server):
        host, port = _split(server)
        try:
            addr = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0][-1]
        except OSError:
            raise OSError("cannot resolve " + host)
        req = self._req
        req[0] = 0x23  # leap 0, version 4, mode 3 (client)
        nonce = os.urandom(8)
        # Our transmit timestamp is a random nonce: the server echoes it as the originate
        # timestamp, which tells its reply from a stale or forged one.
        req[40:48] = nonce
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setblocking(False)
            t1 = time.ticks_ms()
            s.sendto(req, addr)
            bad = None
            while True:
                try:
                    resp = s.recv(64)
                except OSError:  # EAGAIN: nothing yet
                    resp = None
                t4 = time.ticks_ms()
                if resp is not None:
                    try:
                        t2, t3 = check(resp, nonce)
                    except ValueError as e:
                        bad = e  # keep listening: a good reply may still come
                    else:
                        # the server's transmit time plus half the network round trip
                        rtt = max(0, time.ticks_diff(t4, t1) - max(0, t3 - t2))
                        return t3 + rtt // 2
                if time.ticks_diff(t4, t1) >= self.timeout_ms:
                    if bad is not None:
                        raise bad
                    raise OSError("no answer in %d ms" % self.timeout_ms)
                await asyncio.sleep_ms(5)
        finally:
            s.close()


def _reason(e):
    if isinstance(e, OSError) and e.args and isinstance(e.args[0], int):
        return "network error %d" % e.args[0]
    return str(e.args[0]) if e.args else type(e).__name__
