# OTA for devices whose credentials come from `uplink relay` (Weightron, Biotz: clouds with no
# OTA of their own): `uplink ota DEVICE` leaves a bundle at the relay, which announces it in
# its answer to the device's token requests ("ota": version, size, sha256); the device saves
# it as a job, resets, and fetches GET /v1/ota before its next cloud session, signed with its
# relay key like its token requests (host_tools/relay.py). The job is the one Blynk.Air's notification makes, and
# uplink.ota_fetch.at_boot downloads (Range resume), checks, installs and switches it; the
# trial and rollback are uplink.ota_tb's, reported on the console (these clouds have no place
# for them). docs/ota.md.
import asyncio

from uplink import log, ota
from uplink.ota_tb import Updater as _Base

PATH = "/v1/ota"  # = host_tools/relay.py OTA_PATH


class Updater(_Base):
    """The trial of a relay-served app: kept after it has been connected a while, else the
    previous app (uplink.ota_tb); reported on the console only."""

    def say(self, state, error=None):
        if error:
            log.error("ota", "%s: %s" % (state, error))
        else:
            log.info("ota", "OTA %s" % state)

    async def run(self):
        await self.trial()
        self.app.ota_done(self)


async def at_boot(app, root=""):
    """Download and install the job offer() left before the reset (resets into the new app).
    Returns True when an app from the relay is on trial or was rolled back: Updater must run."""
    s = ota.read_slot(root)
    trial = "trial" in s or "failed" in s
    job = ota._load(root + ota.JOB)
    if job and not job.get("failed") and not job.get("installed"):
        from uplink import ota_fetch

        cc = app.cfg["platform"]["credentials"]
        await ota_fetch.at_boot(app, root, app.adapter._creds._headers, cc.get("ca"))
    return trial


def offer(app, o, root=""):
    """The relay's token answer offers an update: unless it runs already or failed before, it
    becomes the job for the next boot, and the board resets soon. (Asked here, with the token
    every session fetches anyway, not by a request of its own at boot: on the ESP32 model the
    relay's TLS context made that early stayed in the heap below the session's buffers.)"""
    cc = app.cfg["platform"]["credentials"]
    url = cc["url"].rstrip("/") + PATH
    try:
        want = {"url": url, "src": url, "size": int(o["size"]), "version": str(o.get("version") or "")}
        sha = str(o["sha256"])
    except (KeyError, ValueError, TypeError):
        log.warn("ota", "the relay's update offer is malformed: ignored")
        return
    if want["version"] == app.fw()[1]:
        return  # runs already
    if sha == ota.rolled_back(root):
        log.warn("ota", "%s from the relay was rolled back before: not tried again" % want["version"])
        return
    job = ota._load(root + ota.JOB) or {}
    if ota.same_job(job, want) and job.get("failed"):
        log.warn("ota", "%s from the relay failed before (%s): not tried again" % (want["version"], job["failed"]))
        return
    if not ota.same_job(job, want) or job.get("installed"):
        ota._save(root + ota.JOB, want)
    log.info("ota", "the relay offers %s: downloading after a reset (the heap is whole then)" % want["version"])
    asyncio.create_task(app.reboot_soon())  # (Board.reset writes the held readings first)
