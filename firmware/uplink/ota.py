# Over-the-air update, the flash side: a bundle (host_tools/ota_bundle.py: one JSON manifest line,
# then the files back to back) is appended to PART chunk by chunk as it arrives, checked whole
# (size, sha256, board, format) and per file while it is unpacked into the slot not running,
# then SLOT is switched by temp + rename. main.py boots the new slot on trial; see docs/ota.md.
# Every step streams through one 1 KB buffer: a bundle is never in RAM.
import asyncio
import hashlib
import io
import json
import os

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


def _load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _save(path, obj):
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
    return _load(root + SLOT) or {}


def write_slot(s, root=""):
    _save(root + SLOT, s)


def rolled_back(root=""):
    """The sha256 of the bundle last rolled back, not to be tried again: "bad" once the
    rollback is reported (uplink.ota_tb trial), "sum" on the boot of the rollback itself."""
    s = read_slot(root)
    return s.get("bad") or (s.get("sum") if "failed" in s else None)


def owed(root=""):
    """Whether an updater has work at boot: a trial to run, a rollback or a failed download to
    report (App.start_ota loads it only then)."""
    s = read_slot(root)
    if "trial" in s or "failed" in s:
        return True
    j = _load(root + JOB) or {}
    return bool(j.get("failed") and not j.get("told"))


def current(root=""):
    """(title, version) of the app running: its slot's manifest, or (None, None) for the
    app deployed over USB."""
    cur = read_slot(root).get("cur")
    m = _load(root + cur + "/" + MANIFEST) if cur else None
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
        if _load(r + DL) == d and n >= 0 and n % self.chunk == 0 and n <= self.want["size"]:
            return n // self.chunk
        _rm(r + PART)
        _save(r + DL, d)
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
        _save(r + new + "/" + MANIFEST, m)  # last: the slot is whole
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
