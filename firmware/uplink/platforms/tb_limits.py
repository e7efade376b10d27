# ThingsBoard's rate limits, kept on the device's side (loaded only when getSessionLimits
# names some). Each limit is "N:S,N:S" (at most N per S seconds, every window at once); the
# transport keeps one greedily refilled token bucket per window and closes the connection on
# the first message over it (common/transport DefaultTransportRateLimitService, TbRateLimits).
# A telemetry or attribute message costs one telemetryMessages token and one
# telemetryDataPoints token per key-value; any other message one messages token.
import asyncio
from time import ticks_diff, ticks_ms

from uplink import log

# Our buckets hold SHARE of the server's and refill as fast: what we send stays a fifth of
# each window behind ThingsBoard's count, room for a message that travels slower than the next.
SHARE = 0.8
TELEMETRY = ("v1/devices/me/telemetry", "v1/devices/me/attributes", "v1/gateway/telemetry",
             "v1/gateway/attributes")


def update(adapter, ans):
    """A getSessionLimits answer's rate limits (a gateway's: its own and its devices') as
    adapter.limits, pacing its client from adapter.ready() on; the buckets of the last
    answer are kept while the server says the same (ThingsBoard keeps its own per device)."""
    given = tuple(r for r in (ans.get("rateLimits"), ans.get("gatewayRateLimits"))
                  if isinstance(r, dict) and any(r.values()))
    if not given:
        adapter.limits = None
    elif adapter.limits is None or adapter.limits.specs != given:
        try:
            adapter.limits = Limits(*given)
        except ValueError as e:
            adapter.limits = None
            log.error("thingsboard", "%s: sent without pacing" % e)


class Bucket:
    """One limit: per window [capacity, tokens per ms, tokens]."""

    def __init__(self, spec, what):
        self.w = []
        self.least = 0  # the smallest window's N
        self.t = ticks_ms()
        if spec is not None and not isinstance(spec, str):
            raise ValueError("getSessionLimits answer: rateLimits.%s: %r is not text" % (what, spec))
        for part in (spec or "").replace(";", ",").split(","):
            if not part.strip():
                continue
            try:
                n, s = (int(x) for x in part.split(":"))
            except ValueError:
                raise ValueError("getSessionLimits answer: rateLimits.%s: %r is not N:seconds" % (what, spec))
            if n > 0 and s > 0:
                self.w.append([n * SHARE, n / (s * 1000), n * SHARE])
                self.least = min(self.least or n, n)

    def wait_ms(self, k):
        """0 when k tokens can go now, else the ms until they can (k over the capacity waits
        for a full bucket)."""
        now = ticks_ms()
        dt = ticks_diff(now, self.t)
        self.t = now
        ms = 0
        for w in self.w:
            w[2] = w[0] if dt < 0 else min(w[0], w[2] + dt * w[1])
            need = min(k, w[0]) - w[2]
            if need > 0:
                ms = max(ms, int(need / w[1]) + 1)
        return ms

    def take(self, k):
        for w in self.w:
            w[2] -= k


class Limits:
    """Every rate limit of a session (a gateway's own limits and its devices' both apply)."""

    def __init__(self, *sets):
        self.specs = sets
        self.sets = [(Bucket(r.get("messages"), "messages"), Bucket(r.get("telemetryMessages"), "telemetryMessages"),
                      Bucket(r.get("telemetryDataPoints"), "telemetryDataPoints")) for r in sets]
        self.waited = 0  # ms spent waiting for tokens, for the health keys and the bench
        self._health_at = None  # ticks_ms() of the last reading with health keys

    def inflight(self):
        """Messages in flight that a resend after a reconnect (unpaced) can take out of the
        margin: a fifth of the smallest message window, at least one."""
        least = min([b.least for s in self.sets for b in s[:2] if b.least] or [0])
        return max(1, least // 5) if least else None  # 5: 1 / (1 - SHARE)

    def health_due(self):
        """Whether this reading carries the health keys: at most every health_every_ms, so
        that they never eat the readings' budget."""
        now = ticks_ms()
        if self._health_at is not None and ticks_diff(now, self._health_at) < self.health_every_ms():
            return False
        self._health_at = now
        return True

    def health_every_ms(self, keys=12):
        """How often a reading may carry the ~12 health keys so that they take at most a
        quarter of the tightest data-point window (14000 an hour: every 12 s)."""
        ms = 0
        for s in self.sets:
            for w in s[2].w:
                ms = max(ms, int(4 * keys / w[1]))
        return ms

    def _cost(self, topic, payload):
        # data points: the key-values, as ThingsBoard counts them; counted here without
        # parsing ('":' ends every key; "ts" and "values" are not data points). A '":' inside
        # a string value or a nested object counts more than ThingsBoard does: on the safe side.
        if topic not in TELEMETRY:
            return 0
        n = payload.count(b'":') - 2 * payload.count(b'"values":')
        return max(1, n)

    def _wait(self, dp):
        ms = 0
        for m, t, d in self.sets:
            ms = max(ms, d.wait_ms(dp), t.wait_ms(1)) if dp else max(ms, m.wait_ms(1))
        return ms

    def _take(self, dp):
        for m, t, d in self.sets:
            if dp:
                t.take(1)
                d.take(dp)
            else:
                m.take(1)

    async def wait(self, topic, payload):
        """Return when `payload` on `topic` keeps every limit; its tokens are taken then."""
        dp = self._cost(topic, payload)
        while True:
            ms = self._wait(dp)
            if not ms:
                self._take(dp)
                return
            self.waited += ms
            if ms > 5000:
                log.info("thingsboard", "rate limits: the next message waits %d s" % (ms // 1000))
            await asyncio.sleep_ms(ms)

    def resent(self, pkt):
        """A QoS 1 PUBLISH packet resent after a reconnect: taken from the buckets as it goes."""
        i = 1
        while pkt[i] & 0x80:
            i += 1
        n = pkt[i + 1] << 8 | pkt[i + 2]
        topic = bytes(pkt[i + 3 : i + 3 + n]).decode()
        self._take(self._cost(topic, pkt))
