# Over-the-air updates through ThingsBoard's firmware OTA (its MQTT device API): the shared
# attributes fw_title/fw_version/fw_size/fw_checksum(_algorithm) announce a bundle (asked at
# every connect by platforms/thingsboard.py, FW_KEYS); chunks come over this MQTT session
# (v2/fw/request/{id}/chunk/{n}, payload = chunk size -> v2/fw/response/{id}/chunk/{n});
# progress goes out as fw_state telemetry. The flash side, the trial and the rollback are
# uplink.ota's. docs/ota.md.
import asyncio
import json
import time

from uplink import log, ota

TELEMETRY = "v1/devices/me/telemetry"
RESPONSE = "v2/fw/response/"
CHUNK = 1024  # each chunk is one allocation of its size on arrival: 2 KB failed on fragmented heaps
CHUNK_WAIT_S = 3  # then ask again (an answer lost to a dropped connection); repeats are ignored
CHUNK_TRIES = 30


class Updater(ota.Updater):
    def __init__(self, ctx, root=""):
        ota.Updater.__init__(self, ctx, root)
        self.rid = time.ticks_diff(time.ticks_ms(), 0) & 0xFFFF  # a fresh request id per boot
        self.n = -1
        self.data = b""
        self.got = asyncio.Event()

    # -- from the platform adapter ------------------------------------------------------
    def take(self, cmd):
        """An `ota` command (shared attributes with fw_*): the update is noted; the other
        attributes go on to user.py as an `attributes` command."""
        from uplink.platforms.thingsboard import user_attributes  # the adapter's: resident

        self.announce(cmd.params)
        return user_attributes(cmd.params)

    def announce(self, a):
        if a.get("fw_url"):  # an external package (ThingsBoard's "URL" option): no chunks here
            self.say("FAILED", "package %s %s is an external URL (fw_url%s): upload the file to ThingsBoard instead"
                     % (a.get("fw_title"), a.get("fw_version"), "" if "fw_size" in a else ", no fw_size"))
            return
        try:
            want = {"title": str(a["fw_title"]), "version": str(a["fw_version"]), "size": int(a["fw_size"]),
                    "sha256": str(a["fw_checksum"]).lower()}
        except (KeyError, ValueError, TypeError):
            return  # an incomplete announcement (TB sends all five together)
        # (the package running is no announcement: the adapter, platforms/thingsboard.py _shared)
        why = ota.guard("refused", want["sha256"], self.root)
        if why is not None:
            log.warn("ota", "%s %s failed before (%s): not tried again" % (want["title"], want["version"], why))
            if not ota.owed(self.root):  # (an owed outcome, report(), says it with its reason)
                self.say("FAILED", why)  # again: a cut may have kept the first from ThingsBoard
            return
        alg = str(a.get("fw_checksum_algorithm") or "SHA256").upper()
        if alg != "SHA256":
            from uplink import ota_sums  # (left in the heap only with an updater that needs it)

            if alg not in ota_sums.SUPPORTED:
                self.say("FAILED", ota_sums.unsupported(alg))
                return
            want["check"], want["sha256"] = [alg, want["sha256"]], None
        if want != self.want:
            self.want = want  # run() goes on with it

    def on_chunk(self, topic, payload):
        try:
            parts = topic[len(RESPONSE):].split("/")
            rid, n = int(parts[0]), int(parts[2])
        except (ValueError, IndexError):
            return
        if rid == self.rid and n == self.n and not self.got.is_set():
            self.data = payload
            self.got.set()

    # -- reporting ----------------------------------------------------------------------
    async def deliver(self, state, error=None):
        """fw_state telemetry (ThingsBoard's OTA guide), True once ThingsBoard has it (PUBACK)."""
        t, v = self.running()
        d = {"fw_state": state, "current_fw_title": t, "current_fw_version": v}
        if error:
            d["fw_error"] = error[:200]
        ota._log(state, error)
        await self.connected()
        try:
            await self.ctx.client.publish(TELEMETRY, json.dumps(d).encode(), 1, False, True)
            return True
        except Exception as e:
            log.warn("ota", "fw_state not sent: %s" % e)
            return False

    # -- the task -----------------------------------------------------------------------
    async def run(self):
        await self.settle()
        while self.want is not None:
            want = self.want
            key = want["sha256"] or want["check"][1]  # (verify() fills sha256 in)
            from uplink.ota_stage import Stage  # (the trial and its report, settle(), are done: its room)

            st = Stage(want, CHUNK, self.root)
            try:
                await self.update(want, st)  # returns when another bundle was announced meanwhile
            except Exception as e:  # OtaError: the bundle's fault; OSError: the flash's
                st.drop()
                if isinstance(e, ota.OtaError) and not e.retry:
                    ota.guard("refuse", key, str(e), self.root)  # on flash: not fetched again after a reset
                if self.want is want:
                    self.want = None
                self.say("FAILED", str(e))
            st.close()
        self.done()

    async def update(self, want, st):
        n = st.begin()
        ota.guard("room", st, self.ctx.cfg["outbox"]["max_bytes"])
        total = (want["size"] + CHUNK - 1) // CHUNK
        self.rid = (self.rid + 1) & 0xFFFF
        log.info("ota", "%s %s: %d bytes, from chunk %d of %d"
                 % (want["title"], want["version"], want["size"], n, total))
        self.say("DOWNLOADING")
        while n < total:
            data = await self.fetch(n)
            if self.want is not want:
                return  # another bundle announced meanwhile: the loop starts that one
            have = st.have()
            if len(data) != min(CHUNK, want["size"] - have):
                raise ota.OtaError("download truncated: chunk %d has %d bytes (%d of %d so far)"
                                   % (n, len(data), have, want["size"]))
            st.add(data)
            data = None  # (the last chunk must not sit in the heap through verify and install)
            n += 1
        self.say("DOWNLOADED")
        m = await st.verify(self.ctx.board.name)
        self.say("VERIFIED")
        new = await st.install(m)
        self.say("UPDATING")
        st.switch(new)
        await asyncio.sleep_ms(1000)  # let UPDATING leave
        self.reset()

    async def fetch(self, n):
        """Chunk n: asked again after a dropped connection or CHUNK_WAIT_S without answer."""
        c = self.ctx.client
        for _ in range(CHUNK_TRIES):
            await self.connected()
            self.n = n
            self.got.clear()
            try:
                await c.publish("v2/fw/request/%d/chunk/%d" % (self.rid, n), str(CHUNK).encode(), 0)
            except OSError:
                continue
            for _ in range(CHUNK_WAIT_S):
                try:
                    await asyncio.wait_for(self.got.wait(), 1)
                    break
                except asyncio.TimeoutError:
                    if not c.is_connected:
                        break  # asked again once reconnected
            if self.got.is_set():
                self.n = -1
                d, self.data = self.data, b""
                return d
        raise OSError("no answer for chunk %d after %d requests" % (n, CHUNK_TRIES))

