# Over-the-air updates through Blynk.Air (Blynk's MQTT API, "OTA": docs.blynk.io
# blynk.cloud/device-mqtt-api/ota.md): the server publishes downlink/ota/json
# {"url", "size", "ver", ...} after the device's info/mcu; the device fetches the package
# over HTTP(S) (response header x-sha256: base64 SHA256 of the package) and, once it runs the
# new app, says so with the next info/mcu's "ver" (platforms/blynk.py, from App.fw). Progress
# and failures go out as the "sys_ota" event, as Blynk.Edgent's OTA reports them
# (blynk-library Edgent OTA.h: Blynk.logEvent("sys_ota", ...)).
# The flash side, the trial and the rollback are uplink.ota's. The notice is saved as ota.JOB
# and the board resets: the download runs at the next boot, before the session
# (uplink.ota_fetch). docs/ota.md.
import asyncio

from uplink import log, ota

EVENT = "sys_ota"


class Updater(ota.Updater):
    def take(self, cmd):
        """A downlink/ota/json: noted; run() turns it into a job for the next boot."""
        self.announce(cmd.params)
        return None

    def announce(self, a):
        try:
            url, size = str(a["url"]), int(a["size"])
            ver = str(a.get("ver") or "")
        except (KeyError, ValueError, TypeError):
            log.warn("ota", "ota/json without url and size: ignored")
            return
        # (the version running is no notice: the adapter, platforms/blynk.py handle)
        q = url.find("?")
        # what the download is of (ota.DL): the URL's token query changes per notification
        want = {"title": "blynk", "version": ver, "size": size, "sha256": None,
                "src": url if q < 0 else url[:q]}
        job = ota.load_json(self.root + ota.JOB) or {}
        if ota.same_job(job, want):
            # Blynk sends ota/json again after every info/mcu while the shipment lasts, and
            # without "ver" when it found no version tag in the file (docs.blynk.io, Device MQTT
            # API, OTA): the package is known by the job's sha256 (the download's x-sha256)
            sha = job.get("sha256")
            if job.get("failed") or (job.get("installed") and ota.guard("refused", sha, self.root)):
                log.warn("ota", "%s failed before: not tried again" % (ver or url))
                return
            if job.get("installed") and sha and sha == ota.read_slot(self.root).get("sum"):
                log.info("ota", "%s runs already (sha256 %s...)" % (ver or url, sha[:12]))
                return
        if self.want is None:
            self.want = dict(want, url=url)  # run() makes it the job

    async def run(self):
        await self.settle()  # (a failed download's report too: told once Blynk has the event)
        job = ota.load_json(self.root + ota.JOB) or {}
        want = self.want
        if want is None:  # started for the trial or the report alone (ota.at_boot)
            self.done()
            return
        if ota.same_job(job, want):
            want["boots"] = job.get("boots", 0)  # boots the network failed it count on
        ota.save_json(self.root + ota.JOB, want)
        await self.deliver("DOWNLOADING")  # sent before the reset
        log.info("ota", "the download runs at the next boot, before the cloud session (the heap is whole then)")
        await asyncio.sleep_ms(500)
        self.reset()

    async def deliver(self, state, error=None):
        """The sys_ota event for `state`; True once Blynk has it (PUBACK), or when `state` has none."""
        ota._log(state, error)
        ver = (self.want or {}).get("version") or "?"
        if state == "DOWNLOADING":
            text = "OTA started: %s" % ver
        elif state == "UPDATED":
            text = "Firmware updated to %s" % self.running()[1]
        elif state == "FAILED":
            text = "OTA failed: %s" % error
        else:
            return True  # Blynk events are counted: start, end and failure only
        pre = self.ctx.adapter.own_prefix
        if pre is None:  # a gateway session: no device of its own to log the event on
            return True
        await self.connected()
        try:
            await self.ctx.client.publish(pre + "event/" + EVENT, text[:255].encode(), 1, False, True)
            return True
        except Exception as e:
            log.warn("ota", "sys_ota event not sent: %s" % e)
            return False
