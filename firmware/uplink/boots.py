# Timestamps for readings taken before the clock was known (docs/internals.md, "uplink.boots").
#
# A reading taken while the clock is unknown is stored with this boot's number and its uptime
# instead of a time. The publisher calls stamp() just before sending: once this boot knows the
# time, its start (now - uptime) turns every such reading into a real timestamp. A boot that
# learnt the time keeps its start in boots.json, so readings it left in the outbox (power cut
# before they went out) still get their exact time on a later boot.
# A boot that never learnt the time has only an estimate: the last moment an earlier boot was
# known to be alive (saved hourly). Its readings get that estimate + uptime: no earlier than
# the truth, in order, one per reading, so a cloud that keeps one value per timestamp keeps
# them all. A warning says which boot was estimated.
import json
import os

from uplink import log

FILE = "boots.json"
KEEP = 8  # boots remembered; readings of older boots go without a time
ALIVE_S = 3600  # how often the "alive" time is saved (a flash write each)


class Boots:
    def __init__(self, path=FILE):
        self.path = path
        d = _load(path)
        self.n = (d.get("n") or 0) + 1
        # [boot, start unix ms or None, exact]; this boot starts no earlier than the last
        # moment the previous boots were known to be alive
        self.hist = (d.get("b") or [])[-(KEEP - 1):] + [[self.n, d.get("alive"), False]]
        self._alive = d.get("alive")
        self._saved_s = log.uptime_s()
        self._warned = []
        self._save()

    def mark(self, reading, now_ms):
        """Give a new reading its time: now_ms when the clock is valid, else this boot and
        its uptime, for stamp() to turn into a time later."""
        if now_ms is not None:
            reading["ts"] = now_ms
        else:
            reading["boot"] = self.n
            reading["up"] = log.uptime_ms()
        return reading

    def _entry(self, boot):
        for e in self.hist:
            if e[0] == boot:
                return e
        return None

    def tick(self, now_ms):
        """Called now and then (App.supervise): learns this boot's start once the clock is
        valid (or moves it after a clock correction) and saves the alive time hourly."""
        me = self.hist[-1]
        up_s = log.uptime_s()
        if now_ms is not None:
            start = now_ms - log.uptime_ms()
            if not me[2] or abs(start - me[1]) > 2000:
                me[1], me[2] = start, True
                self._alive = now_ms
                self._saved_s = up_s
                self._save()
                return
        if up_s - self._saved_s >= ALIVE_S and me[1] is not None:
            self._alive = me[1] + log.uptime_ms()
            self._saved_s = up_s
            self._save()

    def stamp(self, r, now_ms=None, final=False):
        """Turn a reading's boot/uptime into "ts" (unix ms); now_ms: the clock's time or None.
        False when it is this boot's and the clock is not known yet: the caller holds it, or
        with final=True sends it with the best time there is (an estimate, or none)."""
        up = r.get("up")
        if up is None:
            return True
        if now_ms is not None and not self.hist[-1][2]:
            self.tick(now_ms)
        e = self._entry(r.get("boot"))
        if e is not None and not e[2] and e[0] == self.n and not final:
            return False
        ts = None
        if e is not None and e[1] is not None:
            ts = e[1] + up
        if e is None or not e[2]:
            self._warn(r.get("boot"), ts)
        r.pop("boot", None)
        r.pop("up", None)
        r["ts"] = ts
        return True

    def _warn(self, boot, ts):
        if boot in self._warned:
            return
        if len(self._warned) >= KEEP:
            self._warned.pop(0)
        self._warned.append(boot)
        if ts is None:
            log.warn("clock", "readings of boot %s were taken before any clock sync and no "
                     "earlier time is known: sent without a time (the cloud's arrival time)" % boot)
        else:
            log.warn("clock", "readings of boot %s were taken before any clock sync: stamped "
                     "from the last known time, which is earlier than the truth" % boot)

    def _save(self):
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump({"n": self.n, "b": self.hist, "alive": self._alive}, f)
            os.rename(tmp, self.path)
        except OSError as e:
            log.warn("clock", "%s not saved: %s" % (self.path, e))


def _load(path):
    try:
        with open(path) as f:
            d = json.load(f)
        if isinstance(d, dict) and isinstance(d.get("n"), int):
            return d
    except (OSError, ValueError):
        pass
    return {}
