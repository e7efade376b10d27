# Over-the-air updates, one subsystem (docs/ota.md). A bundle (host_tools/ota_bundle.py: one
# JSON manifest line, then the files back to back) is downloaded, checked and unpacked into the
# slot not running by uplink.ota_stage; main.py boots the new slot on trial, and uplink.ota_trial
# keeps it or goes back and owes the cloud the outcome. This module: the state on flash
# (slot.json, the job) and the updater's life. Each cloud's delivery is beside it:
# ota_thingsboard (chunks over MQTT), ota_blynk (Blynk.Air), ota_relay (the token relay's), and
# ota_fetch (the HTTP(S) download at boot the last two use). None of it is resident: App loads
# it when there is work and the updater's done() unloads it (uplink.transient); the stage, the
# trial and the checks (ota_guard) are loaded only for their part.
import asyncio
import json
import os

from uplink import log

PART = "ota.part"  # the download so far
DL = "ota.dl"  # what PART is a download of: resume only the same bundle
SLOT = "slot.json"  # = main.py's SLOT
MANIFEST = "bundle.json"  # in a slot, written last: main.py boots only a slot that has it
BUF = 1024
JOB = "ota.job"  # a package to fetch over HTTP(S) at the next boot (uplink.ota_fetch); then its outcome
REFUSED = "ota.refused"  # [[key, reason], ...]: bundles refused, never fetched again (ota_guard)


class OtaError(Exception):
    """A bundle refused; the message is what fw_error reports. `retry`: not the bundle's
    fault (no room now), so not remembered as refused."""

    retry = False


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def save_json(path, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
    os.rename(path + ".tmp", path)


def same_job(job, want):
    """Whether a saved JOB is a download of the package `want` describes."""
    return all(job.get(k) == want[k] for k in ("src", "size", "version"))


def read_slot(root=""):
    return load_json(root + SLOT) or {}


def write_slot(s, root=""):
    save_json(root + SLOT, s)


def guard(fn, *args):
    """uplink.ota_guard.<fn>(*args) (refusals on flash, the room check), its code in the heap
    for the call only: beside a download at 128k every KB counts."""
    from uplink import transient

    with transient():
        from uplink import ota_guard

        return getattr(ota_guard, fn)(*args)


def owed(root=""):
    """Whether an updater has work at boot: a trial to run, a rollback to report, an outcome
    not yet acknowledged by the cloud, or a failed download to report (at_boot starts it only then)."""
    s = read_slot(root)
    if "trial" in s or "failed" in s or "owe" in s:
        return True
    j = load_json(root + JOB) or {}
    return bool(j.get("failed") and not j.get("told"))


def current(root=""):
    """(title, version) of the app running: its slot's manifest, or (None, None) for the
    app deployed over USB."""
    cur = read_slot(root).get("cur")
    m = load_json(root + cur + "/" + MANIFEST) if cur else None
    return (m.get("title"), m.get("version")) if m else (None, None)


def running(board, root=""):
    """(title, version) the cloud is told: the active slot's manifest, else what a bundle of
    this build would declare (host_tools/ota_bundle.py title_for: "uplink-<board>"; the build's
    VERSION). One title everywhere, so a package titled as the bundle matches the device."""
    from uplink import VERSION

    t, v = current(root)
    return (t or "uplink-" + board, v or VERSION)


# -- the updater's life -----------------------------------------------------------------------


def start(ctx, unload=None):
    """The main cloud's updater, loaded only when it has work (an announcement; a trial, a
    rollback or a failure to report at boot). `unload`: the uplink.transient its code was
    loaded in, ended by done()."""
    if ctx.cfg["platform"]["kind"] == "blynk":
        from uplink.ota_blynk import Updater as U
    elif ctx.adapter.relayed():
        U = Updater  # the relay's clouds hear nothing: the trial, told on the console
    else:
        from uplink.ota_thingsboard import Updater as U
    u = U(ctx)
    u.unload = unload
    ctx.ota = u
    ctx.keep("ota", u.run)
    return u


def take(ctx, cmd, unload=None):
    """An `ota` command from the main cloud: to its updater, started for it if need be.
    What the updater hands back (attributes beside ThingsBoard's fw_*) goes on to user.py."""
    return (ctx.ota or start(ctx, unload)).take(cmd)


async def at_boot(ctx, unload):
    """Work left for this boot, done before any session while the heap is whole: a download
    (Blynk.Air's, the relay's), then a trial to run or an outcome to report. True when an
    updater runs now (its done() ends `unload`)."""
    from uplink import transient

    if ctx.cfg["platform"]["kind"] == "blynk":
        with transient():  # the download's code leaves the heap before the session's TLS
            from uplink import ota_fetch

            await ota_fetch.at_boot(ctx)
    elif ctx.adapter.relayed():
        with transient():
            from uplink import ota_relay

            await ota_relay.download(ctx)
    if (ctx.ota_watch or ctx.adapter.relayed()) and owed():
        start(ctx, unload)
        return True
    return False


class Updater:
    """The trial and rollback of a new app, shared by every cloud's delivery: a subclass adds
    take() (an announcement) and deliver() (how the cloud hears of a state); this one says them
    on the console only (the relay's clouds have no place for them)."""

    want = None  # the package announced, while one is
    unload = None  # the uplink.transient this updater's code was loaded in

    def __init__(self, ctx, root=""):
        self.ctx = ctx
        self.root = root

    def take(self, cmd):
        return None

    def say(self, state, error=None):
        """A state on its way (best effort: the final ones are owed on flash, report())."""
        asyncio.create_task(self.deliver(state, error))

    async def deliver(self, state, error=None):
        """Tell the cloud `state`; True once it has it (its PUBACK). Here: the console."""
        _log(state, error)
        return True

    def running(self):
        """(title, version) of the app running: the app's, read once at boot (App.fw)."""
        return running(self.ctx.board.name, self.root) if self.root else self.ctx.fw()

    async def run(self):
        await self.settle()
        self.done()

    async def settle(self):
        """A trial to run, an outcome owed to the cloud: done first, with their code in the
        heap for them only (uplink.ota_trial), not beside a download."""
        if not owed(self.root):
            return
        from uplink import transient

        with transient():
            from uplink import ota_trial

            await ota_trial.trial(self)
            await ota_trial.report(self)

    def done(self):
        """Nothing left to do: the updater and its code leave the heap."""
        ctx = self.ctx
        if ctx.ota is self:
            ctx.ota = None
            if self.unload is not None:
                self.unload.end()

    async def connected(self):
        while not (self.ctx.client and self.ctx.client.is_connected):
            await asyncio.sleep_ms(200)

    def reset(self):
        self.ctx.board.reset()  # (Board.leave writes the readings held in RAM first)


def _log(state, error):
    if error:
        log.error("ota", "%s: %s" % (state, error))
    else:
        log.info("ota", "OTA %s" % state)
