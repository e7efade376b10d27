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
REFUSED = "ota.refused"  # [[key, reason], ...]: bundles refused, never fetched again (refuse())
REFUSED_MAX = 8
BLOCK = 4096  # the ESP32's littlefs block, when statvfs cannot say


class OtaError(Exception):
    """A bundle refused; the message is what fw_error reports. `retry`: not the bundle's
    fault (no room now), so not remembered as refused."""

    retry = False


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


def refused(key, root=""):
    """Why the bundle `key` (its announced checksum) was refused before, or None. On flash:
    a reset does not make a wrong checksum or board worth a second download."""
    if not key:
        return None
    s = read_slot(root)
    if key in (s.get("bad"), s.get("sum") if "failed" in s else None):
        return "rolled back before"
    for k, why in load_json(root + REFUSED) or ():
        if k == key:
            return why
    return None


def refuse(key, why, root=""):
    """Remember the bundle `key` as refused, with why; the oldest of REFUSED_MAX go."""
    if not key:
        return
    rs = [r for r in load_json(root + REFUSED) or () if r[0] != key][-(REFUSED_MAX - 1):]
    rs.append([key, why[:200]])
    save_json(root + REFUSED, rs)


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


class Stage:
    """One download: `want` = {"title", "version", "size", "sha256"} as the cloud announced
    (and "check": [algorithm, digest] when the cloud's checksum is not a SHA256)."""

    f = None  # PART, open for appending while a piece fills

    def __init__(self, want, chunk, root=""):
        self.want = want
        self.chunk = chunk
        self.root = root
        self.n = 0  # bytes of PART written (on flash once the piece they are in is closed)
        # PART is closed (committed) at whole filesystem blocks: littlefs copies a file's
        # partly written last block at every reopen, an erase per chunk otherwise
        self.piece = max(chunk, _block(root))
        # the one 1 KB buffer of verify and install, taken before the download fragments the
        # heap (a fresh 1 KB block after it failed at 128k)
        self._ba = bytearray(BUF)
        self.buf = memoryview(self._ba)

    def begin(self):
        """The next chunk to fetch: where PART left off when it is this bundle's (a whole
        part too: a cut while it was checked costs no download), else 0."""
        r = self.root
        d = dict(self.want, chunk=self.chunk)
        n = _size(r + PART)
        size = self.want["size"]
        if load_json(r + DL) == d and 0 <= n <= size and (n % self.chunk == 0 or n == size):
            self.n = n
            return (n + self.chunk - 1) // self.chunk
        self.close()
        _rm(r + PART)
        save_json(r + DL, d)
        open(r + PART, "wb").close()
        self.n = 0
        return 0

    def room(self, reserve):
        """Refuse, before the first chunk, a bundle the filesystem cannot hold beside `reserve`
        bytes kept for the outbox: the rest of the download, and the slot it unpacks into
        (about its size; the slot not running is emptied for it)."""
        r = self.root
        size = self.want["size"]
        try:
            st = os.statvfs(r or "/")
            free = st[1] * st[4]
        except OSError:
            return
        cur = read_slot(r).get("cur") or ""
        free += _du(r + ("app_b" if cur == "app_a" else "app_a"))
        need = size - self.n + size + 2 * self.piece
        if need + reserve > free:
            e = OtaError("no room: the bundle needs %d bytes of flash (%d download + unpacked), %d are free "
                         "beside %d kept for the outbox; make room or a smaller bundle" % (need, size, free, reserve))
            e.retry = True
            raise e

    def add(self, data):
        """Append one chunk; PART is committed at every piece, so a cut loses at most the
        piece in progress. True when all is here."""
        if self.f is None:
            self.f = open(self.root + PART, "ab")
        self.f.write(data)
        self.n += len(data)
        done = self.n >= self.want["size"]
        if done or self.n % self.piece == 0:
            self.close()
        return done

    def have(self):
        return self.n

    def close(self):
        if self.f is not None:
            f, self.f = self.f, None
            f.close()

    def drop(self):
        self.close()
        _rm(self.root + PART)
        _rm(self.root + DL)

    async def verify(self, board):
        """The whole download checked before anything changes: size, sha256, format, board.
        Returns the manifest."""
        self.close()
        path = self.root + PART
        size = _size(path)
        if size != self.want["size"]:
            raise OtaError("download truncated: %d of %d bytes" % (max(size, 0), self.want["size"]))
        h = hashlib.sha256()
        check = self.want.get("check")  # ThingsBoard's other algorithms: their code only when asked for
        c = None
        if check:
            from uplink import ota_sums

            c = ota_sums.new(check[0])
        buf = self.buf
        with open(path, "rb") as f:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                h.update(buf[:n])
                if c is not None:
                    c.update(buf[:n])
                await asyncio.sleep_ms(0)  # crypto on a 240 MHz chip: let the other tasks run
            got = _hex(h.digest())
            exp = self.want["sha256"]
            if c is not None and c.hexdigest() != check[1]:
                raise OtaError("checksum mismatch: got %s %s, expected %s" % (check[0], c.hexdigest(), check[1]))
            if exp is None:  # not announced (Blynk without x-sha256): the files' and body's sums still hold
                self.want["sha256"] = got
            elif got != exp.lower():  # before the manifest needs its big block
                raise OtaError("checksum mismatch: got sha256 %s, expected %s" % (got, exp))
            h = c = None
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


def _block(root):
    try:
        return os.statvfs(root or "/")[0] or BLOCK
    except OSError:
        return BLOCK


def _du(path):
    """Bytes the files under path take, each rounded up to whole blocks."""
    b = _block("")
    n = 0
    try:
        entries = list(os.ilistdir(path))
    except OSError:
        return 0
    for e in entries:
        p = path + "/" + e[0]
        n += _du(p) if e[1] == 0x4000 else (max(_size(p), 0) + b - 1) // b * b
    return n


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
        await self.trial()
        await self.report()
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

    async def report(self):
        """The outcome owed on flash (slot.json "owe", written with the commit or the rollback;
        a download's failure in JOB) goes to the cloud, again after every reconnect and every
        boot, until the cloud has it; only then is the mark cleared."""
        while True:
            s = read_slot(self.root)
            o = s.get("owe")
            if not o:
                break
            if await self.deliver(o[0], o[1]):
                s = read_slot(self.root)
                if s.get("owe") == o:
                    del s["owe"]
                    write_slot(s, self.root)
                break
            await asyncio.sleep_ms(1000)
        job = load_json(self.root + JOB) or {}
        if job.get("failed") and not job.get("told") and await self.deliver("FAILED", job["failed"]):
            job["told"] = 1
            save_json(self.root + JOB, job)

    async def trial(self):
        s = read_slot(self.root)
        if "failed" in s:
            why = s.get("why") or _last_crash() or "reset during its trial, before it was healthy"
            bad = s.get("sum")
            refuse(bad, "rolled back: " + why, self.root)
            # the rollback (main.py's) becomes the FAILED owed to the cloud, in one rename
            write_slot({"cur": s.get("cur") or "", "bad": bad,
                        "owe": ["FAILED", "rolled back from slot %s: %s" % (s["failed"], why)]}, self.root)
            return
        if s.get("trial") is None:
            return  # nothing on trial; the running version is told at every connect (platforms/)
        m = load_json(self.root + s["cur"] + "/" + MANIFEST) or {}
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
            c = self.ctx.client
            if c is not None and c.is_connected:
                since = now if since is None else since
                if time.ticks_diff(now, since) >= commit_ms:
                    # connected is not enough: the new code must read, and say it is well
                    why = unhealthy(*self.ctx.user())
                    if why is None:
                        # kept, with UPDATED owed to the cloud: one rename, so a cut between
                        # the commit and the cloud's PUBACK still tells it (report())
                        write_slot({"cur": s["cur"], "prev": s.get("prev") or "", "sum": s.get("sum"),
                                    "owe": ["UPDATED", None]}, self.root)
                        return
            else:
                since = None
            if time.ticks_diff(now, t0) >= trial_ms:
                s["failed"], s["cur"] = s["cur"], s.get("prev") or ""
                s["why"] = why
                del s["trial"]
                write_slot(s, self.root)
                log.error("ota", "trial failed: %s; back to the previous app" % why)
                self.reset()
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


def _log(state, error):
    if error:
        log.error("ota", "%s: %s" % (state, error))
    else:
        log.info("ota", "OTA %s" % state)


def _last_crash():
    d = load_json("crashes.json")  # uplink.safemode.PATH (not imported: it leaves the heap)
    try:
        return d.get("last") if d and d.get("crashes") else None
    except AttributeError:
        return None
