# OTA for devices whose credentials come from `uplink relay` (Weightron, Biotz: clouds with no
# OTA of their own): `uplink ota DEVICE` leaves a bundle at the relay, and at every boot, before
# the cloud session, the device asks GET /v1/ota, signed with its relay key like its token
# requests (host_tools/relay.py): 204 = nothing; else the bundle's size, version (x-fw-ver)
# and sha256 (x-sha256). A new one becomes the same job Blynk.Air's notification makes, and
# uplink.ota_fetch.at_boot downloads (Range resume), checks, installs and switches it; the
# trial and rollback are uplink.ota_tb's, reported on the console (these clouds have no place
# for them). docs/ota.md.
from uplink import log, ota, ota_fetch
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


async def at_boot(app, root=""):
    """Fetch and install a bundle the relay has for this device (resets into it). Returns
    True when an app from the relay is on trial or was rolled back: Updater must run."""
    from uplink import credentials

    s = ota.read_slot(root)
    trial = "trial" in s or "failed" in s
    cc = app.cfg["platform"].get("credentials") or {}
    url = cc["url"].rstrip("/") + PATH
    sign = credentials.from_config(app.cfg["platform"])._headers
    try:
        st, status, hd, _ = await ota_fetch.open_get(app, url, 0, sign, cc.get("ca"), last=0)
        st.close()
    except Exception as e:  # the relay away: the app runs as it is
        log.warn("ota", "relay %s: %s" % (url, e))
        return trial
    if status == 204:
        return trial
    rng = hd.get("range") or ""
    if status != 206 or "/" not in rng:
        log.warn("ota", "relay %s answered HTTP %d" % (url, status))
        return trial
    want = {"url": url, "src": url, "size": int(rng[rng.find("/") + 1:]), "version": hd.get("ver") or ""}
    if want["version"] == app.fw()[1]:
        return trial  # runs already
    job = ota._load(root + ota.JOB) or {}
    # "bad" once the rolled-back trial is reported; on the boot of the rollback itself, "sum"
    bad = s.get("bad") or (s.get("sum") if "failed" in s else None)
    if hd.get("sha256") and hd["sha256"] == bad:
        log.warn("ota", "%s from the relay was rolled back before: not tried again" % want["version"])
        return trial
    if ota.same_job(job, want) and job.get("failed"):
        log.warn("ota", "%s from the relay failed before (%s): not tried again" % (want["version"], job["failed"]))
        return trial
    if not ota.same_job(job, want) or job.get("installed"):
        ota._save(root + ota.JOB, want)
    log.info("ota", "the relay offers %s: downloading" % want["version"])
    await ota_fetch.at_boot(app, root, sign, cc.get("ca"))
    return trial
