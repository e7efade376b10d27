# An update's trial and its outcome (docs/ota.md, Trial, Rollback, "The outcome is owed"): the
# new app is kept once it is healthy, else the boot loader (main.py) goes back; either way the
# outcome is written to flash with the commit or the rollback and sent until the cloud has it.
# Loaded by Updater.settle() for a boot that has a trial or an outcome to report, and unloaded
# before any download (uplink.transient).
import asyncio
import time

from uplink import log, ota

COMMIT_AFTER_S = 60  # connected this long on trial: the new app is kept (bundle's commit_after_s)
TRIAL_S = 600  # no commit by then: back to the previous app (bundle's trial_s)


async def report(u):
    """The outcome owed on flash (slot.json "owe", written with the commit or the rollback;
    a download's failure in ota.JOB) goes to the cloud, again after every reconnect and every
    boot, until the cloud has it; only then is the mark cleared."""
    while True:
        s = ota.read_slot(u.root)
        o = s.get("owe")
        if not o:
            break
        if await u.deliver(o[0], o[1]):
            s = ota.read_slot(u.root)
            if s.get("owe") == o:
                del s["owe"]
                ota.write_slot(s, u.root)
            break
        await asyncio.sleep_ms(1000)
    job = ota.load_json(u.root + ota.JOB) or {}
    if job.get("failed") and not job.get("told") and await u.deliver("FAILED", job["failed"]):
        job["told"] = 1
        ota.save_json(u.root + ota.JOB, job)


async def trial(u):
    s = ota.read_slot(u.root)
    if "failed" in s:
        why = s.get("why") or _last_crash() or "reset during its trial, before it was healthy"
        bad = s.get("sum")
        ota.guard("refuse", bad, "rolled back: " + why, u.root)
        # the rollback (main.py's) becomes the FAILED owed to the cloud, in one rename
        ota.write_slot({"cur": s.get("cur") or "", "bad": bad,
                        "owe": ["FAILED", "rolled back from slot %s: %s" % (s["failed"], why)]}, u.root)
        return
    if s.get("trial") is None:
        return  # nothing on trial; the running version is told at every connect (platforms/)
    m = ota.load_json(u.root + s["cur"] + "/" + ota.MANIFEST) or {}
    commit_ms = int(m.get("commit_after_s", COMMIT_AFTER_S)) * 1000
    trial_ms = int(m.get("trial_s", TRIAL_S)) * 1000
    log.info("ota", "on trial: kept after %d s connected with readings, else the previous app in %d s"
             % (commit_ms // 1000, trial_ms // 1000))
    t0 = time.ticks_ms()
    since = None
    why = "no cloud connection for %d s within its %d s trial" % (commit_ms // 1000, trial_ms // 1000)
    while True:
        await asyncio.sleep_ms(250)
        now = time.ticks_ms()
        c = u.ctx.client
        if c is not None and c.is_connected:
            since = now if since is None else since
            if time.ticks_diff(now, since) >= commit_ms:
                # connected is not enough: the new code must read, and say it is well
                why = unhealthy(*u.ctx.user())
                if why is None:
                    # kept, with UPDATED owed to the cloud: one rename, so a cut between
                    # the commit and the cloud's PUBACK still tells it (report())
                    ota.write_slot({"cur": s["cur"], "prev": s.get("prev") or "", "sum": s.get("sum"),
                                    "owe": ["UPDATED", None]}, u.root)
                    if u.ctx.cfg["device"].get("romfs"):
                        # its bytecode takes the heap until the next boot moves it into ROMFS
                        log.info("ota", "kept; resetting to move it into ROMFS")
                        u.reset()
                    return
        else:
            since = None
        if time.ticks_diff(now, t0) >= trial_ms:
            s["failed"], s["cur"] = s["cur"], s.get("prev") or ""
            s["why"] = why
            del s["trial"]
            ota.write_slot(s, u.root)
            log.error("ota", "trial failed: %s; back to the previous app" % why)
            u.reset()
            return


def unhealthy(user, reads):
    """Why the app on trial is not healthy yet, or None: read() has returned a reading, and
    user.healthy(), if user.py defines one, says so (docs/ota.md, Trial)."""
    if not reads:
        return "read() has not returned a reading"
    f = getattr(user, "healthy", None)
    if f is None:
        return None
    try:
        ok = f()
    except Exception as e:
        return "user.healthy() raised %s: %s" % (type(e).__name__, e)
    return None if ok else "user.healthy() returned %r" % (ok,)


def _last_crash():
    d = ota.load_json("crashes.json")  # uplink.safemode.PATH (not imported: it leaves the heap)
    try:
        return d.get("last") if d and d.get("crashes") else None
    except AttributeError:
        return None
