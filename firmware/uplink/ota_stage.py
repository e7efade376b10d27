# An update's bundle on flash (docs/ota.md): appended to ota.PART chunk by chunk as it
# arrives, checked whole (size, checksum, board, format) and per file while it is unpacked into
# the slot not running, then slot.json is switched by temp + rename. Streams through one 1 KB
# buffer: a bundle is never in RAM. Loaded only while a download runs (uplink.transient).
import asyncio
import binascii
import hashlib
import io
import json
import os

from uplink.ota import BUF, DL, MANIFEST, PART, OtaError, _size, load_json, read_slot, save_json, write_slot

FORMAT = "uplink-bundle/1"
HEADER_MAX = 8192  # = host_tools/ota_bundle.py HEADER_MAX
BLOCK = 4096  # the ESP32's littlefs block, when statvfs cannot say


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
            try:  # 32 bytes, not 64 characters, while install runs (~50 B a file at 128k)
                e[2] = binascii.unhexlify(e[2])
            except (ValueError, TypeError):
                raise OtaError("%s: bad sha256 in the manifest" % p)
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
                if h.digest() != sha:
                    raise OtaError("%s: sha256 mismatch" % path)
            if _hex(body.digest()) != m.get("body_sha256"):
                raise OtaError("bundle body sha256 mismatch")
            # last, the slot is whole: the bundle's own manifest line, copied (not built again in RAM)
            src.seek(0)
            left = m["head"]
            out = r + new + "/" + MANIFEST
            with open(out + ".tmp", "wb") as f:
                while left:
                    n = src.readinto(buf[:min(left, BUF)])
                    f.write(buf[:n])
                    left -= n
            os.rename(out + ".tmp", out)
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


def _mkdirs(base, path):
    parts = path.split("/")[:-1]
    d = base
    for p in parts:
        d += "/" + p
        try:
            os.mkdir(d)
        except OSError:
            pass  # exists
