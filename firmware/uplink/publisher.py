# Drains the outbox to the broker. Records leave the outbox only when the broker's PUBACK for
# the message carrying them arrives (MQTTClient.on_ack), so a dead link, a broker restart or
# a power cut loses nothing that was stored: the worst case is a record sent twice.
#
# Memory is the limit, not speed. The only window is the client's (publish(wait=False) waits
# for a free slot); a message carries consecutive records of at most INFLIGHT_BYTES / window
# stored bytes (MSG_BYTES at most, one record at least), so what waits for PUBACKs stays
# near INFLIGHT_BYTES and every allocation on the way (decoded readings, payload, the packet
# the client keeps for a resend) near 1 KB or less, which a fragmented 96 KB heap still
# finds. Sending a whole batch of 20 readings as one 3 KB message met MemoryError there
# several times a second (make bench BENCH_ARGS=drain).
import asyncio
import gc
import json

from uplink import log

MSG_BYTES = 1024
INFLIGHT_BYTES = 8192
# A link dropped again and again with nothing acknowledged (a broker that refuses what we
# send: too big, too many at once, too fast) makes no progress by resending the same: each
# such drop halves the messages in flight and their size, down to one reading alone. A
# reading that alone, sent on a link that had stayed up PROBE_MS without it, is followed by
# a drop STRIKES times is one the cloud refuses: it is set aside (outbox.set_aside), not
# resent forever. GROW_AFTER acknowledged messages in a row undo one halving.
PROBE_MS = 1000
STRIKES = 3
GROW_AFTER = 32


class Publisher:
    HOLD_S = 30  # how long readings of this boot wait for the clock before going untimed

    def __init__(self, outbox, adapter, client, batch=20, stamp=None, kind=None):
        # the cloud this publisher sends to: uplink.cloud records for another are passed by
        self.kind = kind
        self.outbox = outbox
        self.adapter = adapter
        self.client = client
        self.batch = batch
        self._n = batch  # records per read; halved after a MemoryError, grows back after
        self.cursor = 0  # last record id handed to the client
        # Messages in flight, by the client's slot of their packet id (pid % window: the
        # client never has two packets in flight in one slot): the pid and the first and last
        # record id it carries. Fixed lists, so a long drain allocates no table.
        w = client.window
        self._full = (w, min(MSG_BYTES, INFLIGHT_BYTES // w))
        self._limit, self._cap = self._full  # messages in flight, stored bytes per message
        self._mark = 0  # self.acked when the link last dropped
        self._strikes = 0  # drops right after the one suspect reading was sent alone
        self._conn = 0  # client.connections that _ready() last saw
        self.set_aside = 0
        self._freed = asyncio.Event()
        self._pid = [0] * w
        self._first = [0] * w
        self._last = [0] * w
        self._early = []  # PUBACKs that came while publish() ran (see _group)
        self._publishing = False
        self.wake = asyncio.Event()
        self.sent = 0
        self.acked = 0
        self.undeliverable = 0
        # stamp(reading, final) -> False while a reading cannot have its time yet (boots.py)
        self.stamp = stamp
        self._held = None  # log.uptime_s() when readings started waiting for the clock
        client.on_ack = self.on_ack
        client.on_down = self.on_down
        client.on_up = self.notify  # a new connection: the backlog goes now, not at the next poll

    def notify(self):
        """A record was put: wake the drain loop."""
        self.wake.set()

    @property
    def in_flight(self):
        return sum(1 for p in self._pid if p)

    def on_ack(self, pid):
        k = pid % len(self._pid)
        if self._pid[k] != pid:
            if self._publishing and len(self._early) < 8:
                self._early.append(pid)
            return
        self._pid[k] = 0
        ob = self.outbox
        for rid in range(self._first[k], self._last[k] + 1):
            ob.ack(rid)  # (a corrupt record in between was acked already: no effect)
        self.acked += self._last[k] - self._first[k] + 1
        self._strikes = 0
        self._suspect = False
        if self._limit < self._full[0] or self._cap < self._full[1]:
            self._good += 1
            if self._good >= GROW_AFTER:  # steady progress: try bigger again
                self._good = 0
                self._limit = min(self._full[0], self._limit * 2)
                self._cap = min(self._full[1], self._cap * 2)
        if self._limit < len(self._pid):
            self._freed.set()  # _group waits for this, not for the client's window

    def on_down(self):
        """The client's link just went, before any resend. Nothing acknowledged since the last
        drop while messages were out: send less, from the oldest unacknowledged record."""
        if self.acked != self._mark or not self.in_flight:
            self._mark = self.acked
            return
        c = self.client
        for k in range(len(self._pid)):
            if self._pid[k]:
                c.forget(self._pid[k])  # read again from the outbox, in the new shape
        self._good = 0
        if self._limit > 1 or self._cap > 1:
            self._limit = max(1, self._limit // 2)
            self._cap = max(1, self._cap // 2)
            log.warn("publish", "link dropped with nothing acknowledged: now %d message(s) in flight, %s"
                     % (self._limit, "%d B each" % self._cap if self._cap > 1 else "one reading each"))
        elif self._probed:
            self._strikes += 1
        else:
            self._suspect = True  # the next connection probes the link before sending it
        self.restart()

    def restart(self):
        """After a reboot or a fresh session: resend from the oldest unacknowledged record."""
        self.cursor = 0
        self._probed = False
        self._gen += 1  # a message being handed over meanwhile is not counted (_group)
        for k in range(len(self._pid)):
            self._pid[k] = 0

    async def _ready(self):
        # Once per connection, before its first message: the session's rules are known
        # (adapter.ready: ThingsBoard's getSessionLimits), and one reading alone under
        # suspicion waits PROBE_MS so a link that drops by itself is not blamed on it.
        c = self.client
        n = c.connections
        if n == self._conn:
            return True
        lim = await self.adapter.ready(c)
        if lim:
            # fewer in flight (ThingsBoard: its rate limits' margin): bigger messages, so a
            # messages-per-second limit costs fewer readings; at most 32 in flight's share
            # (256 B): 512 B ones met MemoryError on a fragmented 96 KB heap
            lim = min(len(self._pid), lim)
            was = self._full[1]
            self._full = (lim, min(MSG_BYTES, INFLIGHT_BYTES // max(lim, 32)))
            self._limit = min(self._limit, lim)
            self._cap = self._full[1] if self._cap >= was else min(self._cap, self._full[1])
        if self._suspect:
            await asyncio.sleep_ms(PROBE_MS)
            self._probed = True
        if c.connections != n or not c.is_connected:
            return False
        self._conn = n
        return True

    def _set_aside(self):
        # the oldest record, sent alone STRIKES times, each time followed by a drop
        recs = self.outbox.read(0, 1)
        self._strikes = 0
        self._suspect = False
        if not recs:
            return
        rid, data = recs[0]
        kept = self.outbox.set_aside(rid, data)
        self.set_aside += 1
        log.error("publish", "reading %d: the link dropped each of the %d times it was sent alone: %s"
                  % (rid, STRIKES, "set aside in the outbox's aside file" if kept else
                     "dropped (the aside file is full)"))

    _probed = False  # this connection's reading under suspicion waited PROBE_MS first
    _gen = 0  # restart()s so far
    _suspect = False  # one reading alone was out when the link dropped: probe before resending
    _good = 0  # messages acknowledged in a row since the last halving

    async def run(self):
        while True:
            try:
                if self._strikes >= STRIKES:
                    self._set_aside()
                if not (self.client.is_connected and await self._ready()):
                    recs = ()
                else:
                    recs = self.outbox.read(self.cursor, self._n)
                if not recs:
                    self.wake.clear()
                    await self._wait(self.wake, 1000)
                    continue
                await self._send(recs)
                recs = None
                if self._n < self.batch:
                    self._n += 1
            except OSError as e:
                # the link dropped mid-batch: the client resends what it had queued, and what
                # it had not is read again from the cursor
                log.warn("publish", "paused: %s" % e)
                await asyncio.sleep_ms(200)
            except Exception as e:
                # (a MemoryError, an adapter bug) this task must never die, or readings pile up
                # unsent; what the client did not take is read again, in smaller batches.
                log.exc("publish", "paused", e)
                recs = None
                gc.collect()
                if isinstance(e, MemoryError):
                    self._n = max(1, self._n // 2)
                    await asyncio.sleep_ms(100)
                else:
                    await asyncio.sleep_ms(1000)

    async def _wait(self, ev, ms):
        try:
            await asyncio.wait_for_ms(ev.wait(), ms)
        except asyncio.TimeoutError:
            pass

    async def _send(self, recs):
        # the records of one message go to the adapter together; only they are ever decoded
        i, n = 0, len(recs)
        cap = self._cap
        while i < n:
            j, size = i + 1, len(recs[i][1])
            while j < n and size + len(recs[j][1]) <= cap:
                size += len(recs[j][1])
                j += 1
            if not await self._group(recs, i, j):
                return  # readings wait for the clock: the rest is read again later
            i = j

    def _stampable(self, stamp, readings):
        # Readings of this boot taken before the clock was known wait for it (a plain-TCP
        # session learns the time from the platform moments after connecting), at most
        # HOLD_S; how many from the first can go now.
        final = self._held is not None and log.uptime_s() - self._held >= self.HOLD_S
        for k, r in enumerate(readings):
            if not stamp(r, final):
                if self._held is None:
                    self._held = log.uptime_s()
                    log.warn("publish", "readings wait for the clock (at most %d s)" % self.HOLD_S)
                return k
        if not final:  # once given up, the clock's absence is no reason to wait again
            self._held = None
        return len(readings)

    async def _group(self, recs, i, j):
        """Send records i..j-1 as one message; False when some wait for the clock, or the
        link dropped meanwhile and on_down() started again from the oldest record."""
        gen = self._gen
        ids = []
        readings = []
        for k in range(i, j):
            rid, data = recs[k]
            try:
                r = json.loads(data)
            except ValueError:
                # A record that does not parse can never be sent: drop it, say so, move on.
                log.error("outbox", "record %d is corrupt: dropped" % rid)
                self.outbox.ack(rid)
                continue
            to = r.get("to")  # an uplink.cloud record for one cloud (docs/user_api.md)
            if to is not None and to != self.kind:
                self.outbox.ack(rid)  # another of the device's clouds sends it: done here
                continue
            readings.append(r)
            ids.append(rid)
        whole = True
        if readings and self.stamp is not None:
            k = self._stampable(self.stamp, readings)
            if k < len(readings):
                whole = False
                del readings[k:]
                del ids[k:]
                if not k:
                    await asyncio.sleep_ms(1000)
                    return False
        if readings:
            out = self.adapter.encode(readings)
            readings = None
            a = 0
            for topic, payload, n in out:
                a += n
                if topic is None:
                    # the platform can never carry these: drop them rather than block the queue
                    # (an empty reason: the adapter said it once already, and counts them)
                    if payload:
                        what = "reading" if n == 1 else "readings"
                        log.error("publish", "%d %s dropped: %s" % (n, what, payload.decode()))
                    for rid in ids[a - n : a]:
                        self.outbox.ack(rid)
                    self.undeliverable += n
                    continue
                # a publish that has to drain lets the reader run: the PUBACK can come before
                # the pid is known here (then on_ack found no records for it)
                while n and self._limit < len(self._pid) and self.in_flight >= self._limit and self.client.is_connected:
                    self._freed.clear()  # fewer in flight than the client's window
                    await self._wait(self._freed, 1000)
                early = self._early
                early.clear()
                self._publishing = True
                try:
                    pid = await self.client.publish(topic, payload, qos=1, wait=False)
                finally:
                    self._publishing = False
                if gen != self._gen:  # restarted (on_down) meanwhile: all is read again
                    self.client.forget(pid)
                    return False
                if n:  # n == 0: one part of a split reading; its last part carries the ids
                    k = pid % len(self._pid)
                    self._pid[k] = pid
                    self._first[k] = ids[a - n]
                    self._last[k] = ids[a - 1]
                    self.sent += n
                    self.cursor = ids[a - 1]
                    if pid in early:
                        self.on_ack(pid)
                log.pub(topic, payload, n)  # a D line, after the bookkeeping; device.console "info": off
        if whole:
            self.cursor = recs[j - 1][0]
        return whole
