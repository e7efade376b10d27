# Station Wi-Fi: join the best known network, tell a wrong password from a missing network,
# and keep the link up.
#
# Networks are tried in config order (first = preferred). With more than one configured, a
# scan first skips those not on the air, unless none is visible (hidden SSIDs never show up
# in scans: then all are tried); with one there is nothing to choose, and the scan (which
# blocks the whole board for ~1.5 s on the ESP32) is skipped. Each attempt is watched through
# wlan.status() until it succeeds, fails with a reason, or times out. run() watches the link
# and rejoins forever, with exponential backoff and jitter; the backoff only resets once a
# link has stayed up a while, so a flapping AP is not hammered. Passwords never appear in
# messages.
import asyncio
import random
import time

from uplink import log

# network.STAT_* of the ESP32 port (the numbers are ESP-IDF's). Not imported from `network`:
# the host board has no such module.
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
_WHY = {
    202: "wrong password",  # STAT_WRONG_PASSWORD (auth failed)
    204: "wrong password (WPA handshake failed)",  # STAT_HANDSHAKE_TIMEOUT
    15: "wrong password (WPA handshake failed)",  # 4-way handshake timeout, older IDF
    201: "not found",  # STAT_NO_AP_FOUND
    210: "not found (no compatible security)",
    211: "not found (security below threshold)",
    212: "not found (signal below threshold)",
    203: "connection failed",  # STAT_CONNECT_FAIL / STAT_ASSOC_FAIL
    200: "connection failed (AP stopped answering)",  # STAT_BEACON_TIMEOUT
}


class WifiError(Exception):
    pass


class Wifi:
    POLL_MS = 1000  # how often run() looks at the link
    BACKOFF_MIN_MS = 1000
    BACKOFF_MAX_MS = 60000
    STABLE_MS = 30000  # a link up this long resets the backoff
    JOIN_POLL_MS = 100  # how often a join attempt looks at wlan.status()
    # The ESP32 driver retries a failed association by itself, and while it may retry,
    # status() says STAT_CONNECTING; the reason (wrong password, no AP) only shows once its
    # retries are used up, and by default they never are. So: one retry, then we decide.
    RECONNECTS = 1
    # The ESP32 port clears its last disconnect reason only on GOT_IP: connect() keeps it,
    # and status() reports a "not found" / "wrong password" reason before "connecting"
    # (ports/esp32/network_wlan.c, network_wlan_status). So right after connect() status()
    # may still show the previous attempt's failure. A failure code counts only once it
    # differs from what status() said before connect(), or status() moved on meanwhile, or
    # this long has passed: longer than one attempt of the driver (~2.5 s for "not found",
    # more for a WPA2 handshake that times out).
    FRESH_MS = 6000

    def __init__(self, board, networks, timeout_s=20):
        self.board = board
        self.networks = networks
        self.timeout_ms = int(timeout_s * 1000)
        self.ssid = None
        self.last_error = None
        self.drops = 0  # links lost while run() watched
        self.on_up = None  # called when run() has rejoined: the app's MQTT retries at once
        self._wlan = board.wlan()

    @property
    def connected(self):
        return self._wlan.isconnected()

    @property
    def ip(self):
        return self._wlan.ifconfig()[0] if self._wlan.isconnected() else None

    def rssi(self):
        if not self._wlan.isconnected():
            return None
        try:
            return self._wlan.status("rssi")
        except (OSError, ValueError):
            return None

    async def connect(self):
        """Join the first configured network that works; WifiError saying, per network,
        why none did."""
        w = self._wlan
        try:
            if not w.active():
                w.active(True)
        except OSError as e:  # the radio did not start: callers retry WifiError forever
            raise WifiError("radio not started (%s)" % e)
        if w.isconnected():  # the host board, or the driver got the link back by itself
            if self.ssid is None:
                self.ssid = w.config("ssid")
            return
        if not self.networks:
            raise WifiError("no networks configured")
        try:
            w.config(reconnects=self.RECONNECTS)
        except (OSError, ValueError, TypeError):
            pass  # a port without the setting: failures then show up as timeouts
        # Stop the driver's own reconnect attempts: a scan or connect while it is
        # connecting fails on the ESP32.
        try:
            w.disconnect()
        except OSError:
            pass  # nothing to stop
        seen = self._scan() if len(self.networks) > 1 else None
        if seen is not None and not any(n["ssid"] in seen for n in self.networks):
            seen = None  # nothing known in sight: maybe hidden, try them all
        why = []
        for net in self.networks:
            ssid = net["ssid"]
            if seen is not None and ssid not in seen:
                why.append(ssid + ": not found")
                continue
            reason = await self._join(ssid, net.get("password") or "")
            if reason is None:
                self.ssid = ssid
                self.last_error = None
                return
            why.append("%s: %s" % (ssid, reason))
        self.ssid = None
        self.last_error = "; ".join(why)
        raise WifiError(self.last_error)

    async def run(self):
        """Watch the link forever; reconnect after a drop, with backoff and jitter."""
        delay = self.BACKOFF_MIN_MS
        up_since = time.ticks_ms() if self.connected else None
        # Decided once, STABLE_MS after the link came up: a ticks_diff over the link's whole
        # life is wrong after 2**29 ms (6.2 days) on the ESP32, and a week-old link that
        # drops would look like a flapping one.
        stable = False
        while True:
            if self._wlan.isconnected():
                if up_since is None:
                    up_since = time.ticks_ms()
                    stable = False
                elif not stable and time.ticks_diff(time.ticks_ms(), up_since) >= self.STABLE_MS:
                    delay = self.BACKOFF_MIN_MS
                    stable = True
                await asyncio.sleep_ms(self.POLL_MS)
                continue
            if up_since is not None:
                self.drops += 1
                log.warn("wifi", "link to %s lost" % self.ssid)
                if not stable and time.ticks_diff(time.ticks_ms(), up_since) < self.STABLE_MS:
                    # it was up only briefly: a flapping AP, wait before trying again
                    await self._backoff(delay)
                    delay = min(delay * 2, self.BACKOFF_MAX_MS)
                up_since = None
            try:
                await self.connect()
                log.info("wifi", "back on %s, ip %s" % (self.ssid, self.ip))
                up_since = time.ticks_ms()
                stable = False
                if self.on_up is not None:
                    self.on_up()
                continue
            except WifiError as e:
                log.error("wifi", str(e))
            except Exception as e:  # a driver OSError, a MemoryError: never stop rejoining
                log.error("wifi", "join failed: %r" % e)
            await self._backoff(delay)
            delay = min(delay * 2, self.BACKOFF_MAX_MS)

    def jitter(self, delay):
        # somewhere in [delay/2, delay): boards that lost the same AP do not all come back
        # at the same moment
        return delay // 2 + random.getrandbits(16) % max(1, delay // 2)

    async def _backoff(self, delay):
        await asyncio.sleep_ms(self.jitter(delay))

    def _scan(self):
        # SSIDs on the air, or None when the scan itself failed
        try:
            return [r[0].decode() for r in self._wlan.scan()]
        except (OSError, UnicodeError):
            return None

    async def _join(self, ssid, password):
        # One attempt: None once connected, else the reason it failed.
        w = self._wlan
        stale = w.status()  # a failure shown now belongs to an earlier attempt
        try:
            w.connect(ssid, password)
        except OSError as e:
            return "connect refused (%s)" % e
        t0 = time.ticks_ms()
        fresh = min(self.FRESH_MS, self.timeout_ms)
        while True:
            st = w.status()
            if st == STAT_GOT_IP or w.isconnected():
                return None
            if st != stale:
                stale = None  # status moved: whatever it says from now on is this attempt's
            if st in _WHY and (stale is None or time.ticks_diff(time.ticks_ms(), t0) >= fresh):
                w.disconnect()  # or the driver keeps retrying on its own
                return _WHY[st]
            if time.ticks_diff(time.ticks_ms(), t0) >= self.timeout_ms:
                w.disconnect()
                t = self.timeout_ms
                return "timeout after %d %s" % ((t // 1000, "s") if t % 1000 == 0 else (t, "ms"))
            await asyncio.sleep_ms(self.JOIN_POLL_MS)
