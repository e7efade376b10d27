# Drains the outbox to the broker. Records leave the outbox only when the broker's PUBACK for
# the message carrying them arrives (MQTTClient.on_ack), so a dead link, a broker restart or
# a power cut loses nothing that was stored: the worst case is a record sent twice.
import asyncio
import gc
import json

from uplink import log


class Publisher:
    HOLD_S = 30  # how long readings of this boot wait for the clock before going untimed

    def __init__(self, outbox, adapter, client, batch=20, window=8, stamp=None):
        self.outbox = outbox
        self.adapter = adapter
        self.client = client
        self.batch = batch
        self._n = batch  # records per read; halved after a MemoryError, grows back after
        self.window = window  # messages of ours in flight; bounds the id map below
        self.cursor = 0  # last record id handed to the client
        self.inflight = {}  # pid -> [record ids]
        self.wake = asyncio.Event()
        self.space = asyncio.Event()
        self.sent = 0
        self.acked = 0
        self.undeliverable = 0
        # stamp(reading, final) -> False while a reading cannot have its time yet (boots.py)
        self.stamp = stamp
        self._held = None  # log.uptime_s() when readings started waiting for the clock

    def notify(self):
        """A record was put: wake the drain loop."""
        self.wake.set()

    def on_ack(self, pid):
        ids = self.inflight.pop(pid, None)
        if ids is None:
            return
        for rid in ids:
            self.outbox.ack(rid)
        self.acked += len(ids)
        self.space.set()

    def restart(self):
        """After a reboot or a fresh session: resend from the oldest unacknowledged record."""
        self.cursor = 0
        self.inflight = {}

    async def run(self):
        while True:
            try:
                recs = self.outbox.read(self.cursor, self._n) if self.client.is_connected else ()
                if not recs:
                    self.wake.clear()
                    await self._wait(self.wake, 1000)
                    continue
                await self._send(recs)
                if self._n < self.batch:
                    self._n += 1
            except OSError as e:
                # the link dropped mid-batch: the client resends what it had queued, and what
                # it had not is read again from the cursor
                log.warn("publish", "paused: %s" % e)
                await asyncio.sleep_ms(200)
            except Exception as e:
                # MemoryError on a fragmented heap while encoding a backlog, an adapter bug:
                # this task must never die, or readings pile up unsent until the outbox drops
                # them. What was not handed to the client is read again from the cursor;
                # after a MemoryError in smaller batches.
                log.exc("publish", "paused", e)
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

    def _decode(self, recs):
        readings = []
        for rid, data in recs:
            try:
                readings.append(json.loads(data))
            except ValueError:
                # A record that does not parse can never be sent: drop it, say so, move on.
                log.error("outbox", "record %d is corrupt: dropped" % rid)
                self.outbox.ack(rid)
                readings.append(None)
        return readings

    def _stamp(self, stamp, recs, readings):
        # Readings of this boot taken before the clock was known wait for it (a plain-TCP
        # session learns the time from the platform moments after connecting), at most
        # HOLD_S; the records from the first waiting one on are left for later.
        final = self._held is not None and log.uptime_s() - self._held >= self.HOLD_S
        for k, r in enumerate(readings):
            if r is not None and not stamp(r, final):
                if self._held is None:
                    self._held = log.uptime_s()
                    log.warn("publish", "readings wait for the clock (at most %d s)" % self.HOLD_S)
                return k
        if not final:  # once given up, the clock's absence is no reason to wait again
            self._held = None
        return len(recs)

    async def _send(self, recs):
        readings = self._decode(recs)
        if self.stamp is not None:
            k = self._stamp(self.stamp, recs, readings)
            if k == 0:
                await asyncio.sleep_ms(1000)
                return
            recs, readings = recs[:k], readings[:k]
        pairs = [(recs[i][0], r) for i, r in enumerate(readings) if r is not None]
        if not pairs:
            self.cursor = recs[-1][0]
            return
        i = 0
        for topic, payload, n in self.adapter.encode([r for _, r in pairs]):
            ids = [rid for rid, _ in pairs[i : i + n]]
            i += n
            if topic is None:
                # the platform can never carry these: drop them rather than block the queue
                log.error("publish", "%d reading(s) dropped: %s" % (n, payload.decode()))
                for rid in ids:
                    self.outbox.ack(rid)
                self.undeliverable += n
                continue
            while len(self.inflight) >= self.window:
                self.space.clear()
                await self._wait(self.space, 1000)
            pid = await self.client.publish(topic, payload, qos=1, wait=False)
            if ids:  # n == 0: one part of a split reading; its last part carries the ids
                self.inflight[pid] = ids
                self.sent += len(ids)
                self.cursor = ids[-1]
        self.cursor = recs[-1][0]
