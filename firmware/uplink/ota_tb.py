# Over-the-air updates through ThingsBoard's firmware OTA (its MQTT device API): the shared
# attributes fw_title/fw_version/fw_size/fw_checksum(_algorithm) announce a bundle; chunks
# come over this MQTT session (v2/fw/request/{id}/chunk/{n}, payload = chunk size ->
# v2/fw/response/{id}/chunk/{n}); progress goes out as fw_state telemetry. The flash side
# (staging, checks, the slot switch) is uplink.ota; the trial and rollback are here and in
# main.py. The updater is loaded only when there is work for it (App.start_ota): an
# announcement, or a trial or rollback at boot; done, it leaves the heap (App.ota_done). The
# announcement is asked at every connect by the adapter (platforms/thingsboard.py FW_KEYS).
# docs/ota.md.
import asyncio
import json
import time

from uplink import log

TELEMETRY = "v1/devices/me/telemetry"
RESPONSE = "v2/fw/response/"
CHUNK = 1024  # each chunk is one allocation of its size on arrival: 2 KB failed on fragmented heaps
CHUNK_WAIT_S = 3  # then ask again (an answer lost to a dropped connection); repeats are ignored
CHUNK_TRIES = 30
COMMIT_AFTER_S = 60  # connected this long on trial: the new app is kept (bundle's commit_after_s)
TRIAL_S = 600  # no commit by then: back to the previous app (bundle's trial_s)


class Updater:
    def __init__(self, app, root=""):
        self.app = app
        self.root = root
        from uplink import ota

        self.want = None
        # known before the first announcement, which may come before trial() runs
        self.bad = ota.rolled_back(root)
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
        try:
            want = {"title": str(a["fw_title"]), "version": str(a["fw_version"]), "size": int(a["fw_size"]),
                    "sha256": str(a["fw_checksum"]).lower()}
        except (KeyError, ValueError, TypeError):
            return  # an incomplete announcement (TB sends all five together)
        alg = str(a.get("fw_checksum_algorithm") or "SHA256").upper()
        # (the package running is no announcement: the adapter, platforms/thingsboard.py _shared)
        if want["sha256"] in (self.bad, self.app.ota_bad):
            log.warn("ota", "%s %s failed before: not tried again" % (want["title"], want["version"]))
            return
        if alg != "SHA256":
            self.say("FAILED", "checksum algorithm %s: only SHA256 is supported" % alg)
            return
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
    def running(self):
        fw = getattr(self.app, "fw", None)  # the app's, read once at boot
        if fw is not None and not self.root:
            return fw()
        from uplink import ota

        return ota.running(self.app.board.name, self.root)

    def say(self, state, error=None):
        t, v = self.running()
        d = {"fw_state": state, "current_fw_title": t, "current_fw_version": v}
        if error:
            d["fw_error"] = error[:200]
            log.error("ota", "%s: %s" % (state, error))
        else:
            log.info("ota", "fw_state %s" % state)
        c = self.app.client
        if c is not None and c.is_connected:
            asyncio.create_task(self._send(c, d))

    async def _send(self, c, d):
        try:
            await c.publish(TELEMETRY, json.dumps(d).encode(), 1, False, False)
        except Exception as e:
            log.warn("ota", "fw_state not sent: %s" % e)

    async def _connected(self):
        while not (self.app.client and self.app.client.is_connected):
            await asyncio.sleep_ms(200)

    # -- the task -----------------------------------------------------------------------
    async def run(self):
        await self.trial()
        while self.want is not None:
            want = self.want
            try:
                await self.update(want)  # returns when another bundle was announced meanwhile
            except Exception as e:  # OtaError: the bundle's fault; OSError: the flash's
                from uplink import ota

                ota.Stage(want, CHUNK, self.root).drop()
                self.app.ota_bad = want["sha256"]  # kept by the app: this updater leaves the heap
                if self.want is want:
                    self.want = None
                self.say("FAILED", str(e))
        self.app.ota_done(self)

    async def trial(self):
        from uplink import ota

        s = ota.read_slot(self.root)
        if "failed" in s:
            why = s.get("why") or _last_crash() or "reset during its trial, before it was healthy"
            self.bad = s.get("sum")
            await self._connected()
            self.say("FAILED", "rolled back from slot %s: %s" % (s["failed"], why))
            ota.write_slot({"cur": s.get("cur") or "", "bad": self.bad}, self.root)
            return
        if s.get("trial") is None:
            # nothing to report: UPDATED went out at the commit, and the running version is
            # in the client attributes of every connect (platforms/thingsboard.py). A fw_state
            # at every boot would be a telemetry entry that is no reading.
            return
        m = ota._load(self.root + s["cur"] + "/" + ota.MANIFEST) or {}
        commit_ms = int(m.get("commit_after_s", COMMIT_AFTER_S)) * 1000
        trial_ms = int(m.get("trial_s", TRIAL_S)) * 1000
        log.info("ota", "on trial: kept after %d s connected, else the previous app in %d s"
                 % (commit_ms // 1000, trial_ms // 1000))
        t0 = time.ticks_ms()
        since = None
        while True:
            await asyncio.sleep_ms(250)
            now = time.ticks_ms()
            c = self.app.client
            if c is not None and c.is_connected:
                since = now if since is None else since
                if time.ticks_diff(now, since) >= commit_ms:
                    ota.write_slot({"cur": s["cur"], "prev": s.get("prev") or "", "sum": s.get("sum")}, self.root)
                    self.say("UPDATED")
                    return
            else:
                since = None
            if time.ticks_diff(now, t0) >= trial_ms:
                s["failed"], s["cur"] = s["cur"], s.get("prev") or ""
                s["why"] = "no healthy cloud connection within its %d s trial" % (trial_ms // 1000)
                del s["trial"]
                ota.write_slot(s, self.root)
                log.error("ota", "trial failed: %s; back to the previous app" % s["why"])
                self._reset()

    def _reset(self):
        if self.app.outbox is not None:
            self.app.outbox.flush()  # readings held in RAM go to flash: none lost
        self.app.board.reset()

    async def update(self, want):
        from uplink import ota

        st = ota.Stage(want, CHUNK, self.root)
        n = st.begin()
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
            n += 1
        self.say("DOWNLOADED")
        m = await st.verify(self.app.board.name)
        self.say("VERIFIED")
        new = await st.install(m)
        self.say("UPDATING")
        st.switch(new)
        await asyncio.sleep_ms(1000)  # let UPDATING leave
        self._reset()

    async def fetch(self, n):
        """Chunk n: asked again after a dropped connection or CHUNK_WAIT_S without answer."""
        c = self.app.client
        for _ in range(CHUNK_TRIES):
            await self._connected()
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


def _last_crash():
    try:
        with open("crashes.json") as f:  # uplink.safemode.PATH (not imported: it leaves the heap)
            d = json.load(f)
        return d.get("last") if d.get("crashes") else None
    except (OSError, ValueError, AttributeError):
        return None
