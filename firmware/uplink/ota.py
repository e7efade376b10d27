# Over-the-air updates, one subsystem (docs/ota.md). This module: the flash side, the trial
# and its rollback, and the updater's life. A bundle (host_tools/ota_bundle.py: one JSON
# manifest line, then the files back to back) is appended to PART chunk by chunk as it
# arrives, checked whole (size, sha256, board, format) and per file while it is unpacked into
# the slot not running, then SLOT is switched by temp + rename; main.py boots the new slot on
# trial, and Updater.trial keeps it or goes back. Every step streams through one 1 KB buffer:
# a bundle is never in RAM. Each cloud's delivery is beside it: ota_thingsboard (chunks over
# MQTT), ota_blynk (Blynk.Air), ota_relay (the token relay's), and ota_fetch (the HTTP(S)
# download at boot the last two use). None of it is resident: App loads it when there is
# work and the updater's done() unloads it (uplink.transient).
import asyncio
import hashlib
import io
import json
import os
import time

from uplink import log

PART = "ota.part"  # the download so far
DL = "ota.dl"  # what PART is a download of: resume only the same bundle
SLOT = "slot.json"  # = main.py's SLOT
MANIFEST = "bundle.json"  # in a slot, written last: main.py boots only a slot that has it
FORMAT = "uplink-bundle/1"
HEADER_MAX = 8192  # = host_tools/ota_bundle.py HEADER_MAX
BUF = 1024
JOB = "ota.job"  # a package to fetch over HTTP(S) at the next boot (uplink.ota_fetch); then its outcome


class OtaError(Exception):
    """A bundle refused; the message is what fw_error reports."""


class _Head(io.IOBase):
    """The first n bytes of a file, as a stream json.load reads (it refuses what follows)."""

    def __init__(self, f, n):
        self.f = f
        self.n = n

    def readinto(self, buf):
        if self.n <= 0:
            return 0
        k = self.f.readinto(memoryview(buf)[: min(len(buf), self.n)])
        self.n -= k
        return k


def _hex(b):
    return "".join("%02x" % x for x in b)


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


def _rm(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _rmtree(path):
    try:
        entries = list(os.ilistdir(path))
    except OSError:
        return
    for e in entries:
        p = path + "/" + e[0]
        if e[1] == 0x4000:
            _rmtree(p)
        else:
            os.remove(p)
    os.rmdir(path)


def read_slot(root=""):
    return load_json(root + SLOT) or {}


def write_slot(s, root=""):
    save_json(root + SLOT, s)


def rolled_back(root=""):
    """The sha256 of the bundle last rolled back, not to be tried again: "bad" once the
    rollback is reported (Updater.trial), "sum" on the boot of the rollback itself."""
    s = read_slot(root)
    return s.get("bad") or (s.get("sum") if "failed" in s else None)


def owed(root=""):
    """Whether an updater has work at boot: a trial to run, a rollback or a failed download to
    report (at_boot starts it only then)."""
    s = read_slot(root)
    if "trial" in s or "failed" in s:
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


class Stage:
    """One download: `want` = {"title", "version", "size", "sha256"} as the cloud announced."""

    def __init__(self, want, chunk, root=""):
        self.want = want
        self.chunk = chunk
        self.root = root
        # the one 1 KB buffer of verify and install, taken before the download fragments the
        # heap (a fresh 1 KB block after it failed at 128k)
        self._ba = bytearray(BUF)
        self.buf = memoryview(self._ba)

    def begin(self):
        """The next chunk to fetch: where PART left off when it is this bundle's, else 0."""
        r = self.root
        d = dict(self.want, chunk=self.chunk)
        n = _size(r + PART)
        if load_json(r + DL) == d and n >= 0 and n % self.chunk == 0 and n <= self.want["size"]:
            return n // self.chunk
        _rm(r + PART)
        save_json(r + DL, d)
        open(r + PART, "wb").close()
        return 0

    def add(self, data):
        """Append one chunk (on flash before the next is asked for); True when all is here."""
        with open(self.root + PART, "ab") as f:
            f.write(data)
        return _size(self.root + PART) >= self.want["size"]

    def have(self):
        return max(_size(self.root + PART), 0)

    def drop(self):
        _rm(self.root + PART)
        _rm(self.root + DL)

    async def verify(self, board):
        """The whole download checked before anything changes: size, sha256, format, board.
        Returns the manifest."""
        path = self.root + PART
        size = _size(path)
        if size != self.want["size"]:
            raise OtaError("download truncated: %d of %d bytes" % (max(size, 0), self.want["size"]))
        h = hashlib.sha256()
        buf = self.buf
        with open(path, "rb") as f:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                h.update(buf[:n])
                await asyncio.sleep_ms(0)  # crypto on a 240 MHz chip: let the other tasks run
            got = _hex(h.digest())
            exp = self.want["sha256"]
            if exp is None:  # not announced (Blynk without x-sha256): the files' and body's sums still hold
                self.want["sha256"] = got
            elif got != exp.lower():  # before the manifest needs its big block
                raise OtaError("checksum mismatch: got sha256 %s, expected %s" % (got, exp))
            h = None
            f.seek(0)
            hlen = 0
            while hlen < HEADER_MAX:  # the manifest line's length, in small reads
                n = f.readinto(buf)
                i = self._ba.find(b"\n", 0, n) if n else -1  # in place: no 1 KB copy
                if i >= 0 or not n:
                    hlen += i + 1
                    break
                hlen += n
            f.seek(0)
            try:
                # parsed straight from flash: the manifest (~80 B a file) never needs one
                # contiguous block, which a heap the chunks fragmented may not have
                m = json.load(_Head(f, hlen))
                files = m["files"]
            except (ValueError, KeyError, TypeError):
                raise OtaError("not an uplink bundle (no manifest line)")
        if m.get("format") != FORMAT:
            raise OtaError("bundle format %r, this firmware reads %s" % (m.get("format"), FORMAT))
        if m.get("board") != board:
            raise OtaError("bundle is for board %r, this board is %r" % (m.get("board"), board))
        if hlen + sum(e[1] for e in files) != size:
            raise OtaError("bundle sizes do not add up: damaged manifest")
        for e in files:
            p = e[0]
            if not isinstance(p, str) or p.startswith("/") or ".." in p.split("/") or p == MANIFEST:
                raise OtaError("bad path in bundle: %r" % (p,))
        m["head"] = hlen
        return m

    async def install(self, m):
        """Unpack into the slot not running, each file checked; returns the slot's name.
        The running app and SLOT are untouched: a failure here changes nothing that boots."""
        r = self.root
        cur = read_slot(r).get("cur") or ""
        new = "app_b" if cur == "app_a" else "app_a"
        _rmtree(r + new)
        os.mkdir(r + new)
        buf = self.buf
        body = hashlib.sha256()
        with open(r + PART, "rb") as src:
            src.seek(m["head"])
            for path, size, sha in m["files"]:
                _mkdirs(r + new, path)
                h = hashlib.sha256()
                left = size
                with open(r + new + "/" + path, "wb") as out:
                    while left:
                        n = src.readinto(buf[:min(left, BUF)])
                        if not n:
                            raise OtaError("%s: the bundle ends early" % path)
                        mv = buf[:n]
                        h.update(mv)
                        body.update(mv)
                        out.write(mv)
                        left -= n
                        await asyncio.sleep_ms(0)
                if _hex(h.digest()) != sha:
                    raise OtaError("%s: sha256 mismatch" % path)
        if _hex(body.digest()) != m.get("body_sha256"):
            raise OtaError("bundle body sha256 mismatch")
        del m["head"]
        save_json(r + new + "/" + MANIFEST, m)  # last: the slot is whole
        return new

    def switch(self, new):
        """Point the next boot at `new`, on trial (main.py). Atomic: temp + rename."""
        s = read_slot(self.root)
        write_slot({"cur": new, "prev": s.get("cur") or "", "trial": 0, "sum": self.want["sha256"]}, self.root)
        self.drop()


def _mkdirs(base, path):
    parts = path.split("/")[:-1]
    d = base
    for p in parts:
        d += "/" + p
        try:
            os.mkdir(d)
        except OSError:
            pass  # exists


# -- the updater's life -----------------------------------------------------------------------
COMMIT_AFTER_S = 60  # connected this long on trial: the new app is kept (bundle's commit_after_s)
TRIAL_S = 600  # no commit by then: back to the previous app (bundle's trial_s)


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
    take() (an announcement) and say() (how the cloud hears of a state); this one says them on
    the console only (the relay's clouds have no place for them)."""

    want = None  # the package announced, while one is
    unload = None  # the uplink.transient this updater's code was loaded in

    def __init__(self, ctx, root=""):
        self.ctx = ctx
        self.root = root
        # known before the first announcement, which may come before trial() runs
        self.bad = rolled_back(root)

    def take(self, cmd):
        return None

    def say(self, state, error=None):
        if error:
            log.error("ota", "%s: %s" % (state, error))
        else:
            log.info("ota", "OTA %s" % state)

    def running(self):
        """(title, version) of the app running: the app's, read once at boot (App.fw)."""
        return running(self.ctx.board.name, self.root) if self.root else self.ctx.fw()

    async def run(self):
        await self.trial()
        self.done()

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

    async def trial(self):
        s = read_slot(self.root)
        if "failed" in s:
            why = s.get("why") or _last_crash() or "reset during its trial, before it was healthy"
            self.bad = s.get("sum")
            await self.connected()
            self.say("FAILED", "rolled back from slot %s: %s" % (s["failed"], why))
            write_slot({"cur": s.get("cur") or "", "bad": self.bad}, self.root)
            return
        if s.get("trial") is None:
            # nothing to report: UPDATED went out at the commit, and the running version is
            # told at every connect (platforms/thingsboard.py, blynk.py)
            return
        m = load_json(self.root + s["cur"] + "/" + MANIFEST) or {}
        commit_ms = int(m.get("commit_after_s", COMMIT_AFTER_S)) * 1000
        trial_ms = int(m.get("trial_s", TRIAL_S)) * 1000
        log.info("ota", "on trial: kept after %d s connected, else the previous app in %d s"
                 % (commit_ms // 1000, trial_ms // 1000))
        t0 = time.ticks_ms()
        since = None
        while True:
            await asyncio.sleep_ms(250)
            now = time.ticks_ms()
            c = self.ctx.client
            if c is not None and c.is_connected:
                since = now if since is None else since
                if time.ticks_diff(now, since) >= commit_ms:
                    write_slot({"cur": s["cur"], "prev": s.get("prev") or "", "sum": s.get("sum")}, self.root)
                    self.say("UPDATED")
                    return
            else:
                since = None
            if time.ticks_diff(now, t0) >= trial_ms:
                s["failed"], s["cur"] = s["cur"], s.get("prev") or ""
                s["why"] = "no healthy cloud connection within its %d s trial" % (trial_ms // 1000)
                del s["trial"]
                write_slot(s, self.root)
                log.error("ota", "trial failed: %s; back to the previous app" % s["why"])
                self.reset()


def _last_crash():
    d = load_json("crashes.json")  # uplink.safemode.PATH (not imported: it leaves the heap)
    try:
        return d.get("last") if d and d.get("crashes") else None
    except AttributeError:
        return None
