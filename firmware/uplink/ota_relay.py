# OTA for devices whose credentials come from `uplink relay` (Weightron, Biotz: clouds with no
# OTA of their own): `uplink ota DEVICE` leaves a bundle at the relay, which announces it in
# its answer to the device's token requests ("ota": version, size, sha256); offer() saves it
# as a job and resets, and download() fetches GET /v1/ota at the next boot, before the cloud
# session, signed with the relay key like the token requests (host_tools/relay.py). The job
# is the one Blynk.Air's notice makes (uplink.ota_fetch); the trial is uplink.ota's, told on
# the console (these clouds have no place for it). docs/ota.md.
import asyncio

from uplink import log, ota

PATH = "/v1/ota"  # = host_tools/relay.py OTA_PATH


async def download(ctx, root=""):
    """Download, check, install and switch the job offer() left before the reset (resets
    into the new app); a failure is kept in the job."""
    job = ota.load_json(root + ota.JOB)
    if job and not job.get("failed") and not job.get("installed"):
        from uplink import ota_fetch

        cc = ctx.cfg["platform"]["credentials"]
        await ota_fetch.at_boot(ctx, root, ctx.adapter.creds.headers, cc.get("ca"))


def offer(ctx, o, root=""):
    """The relay's token answer offers an update: unless it runs already or failed before, it
    becomes the job for the next boot, and the board resets soon. (Asked here, with the token
    every session fetches anyway, not by a request of its own at boot: on the ESP32 model the
    relay's TLS context made that early stayed in the heap below the session's buffers.)"""
    cc = ctx.cfg["platform"]["credentials"]
    url = cc["url"].rstrip("/") + PATH
    try:
        want = {"url": url, "src": url, "size": int(o["size"]), "version": str(o.get("version") or "")}
        sha = str(o["sha256"])
    except (KeyError, ValueError, TypeError):
        log.warn("ota", "the relay's update offer is malformed: ignored")
        return
    if want["version"] == ctx.fw()[1]:
        return  # runs already
    why = ota.guard("refused", sha, root)
    if why is not None:
        log.warn("ota", "%s from the relay was refused before (%s): not tried again" % (want["version"], why))
        return
    job = ota.load_json(root + ota.JOB) or {}
    if ota.same_job(job, want) and job.get("failed"):
        log.warn("ota", "%s from the relay failed before (%s): not tried again" % (want["version"], job["failed"]))
        return
    if not ota.same_job(job, want) or job.get("installed"):
        ota.save_json(root + ota.JOB, want)
    log.info("ota", "the relay offers %s: downloading after a reset (the heap is whole then)" % want["version"])
    asyncio.create_task(_reset_soon(ctx))


async def _reset_soon(ctx):
    from uplink.app import RESET_DELAY_MS  # (resident)

    await asyncio.sleep_ms(RESET_DELAY_MS)  # the log line and any reply leave first
    ctx.board.reset()  # (Board.reset writes the held readings first)
