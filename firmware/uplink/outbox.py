# A persistent store-and-forward FIFO of byte records on the board's filesystem: readings
# wait here until the broker acknowledges them, across resets and power cuts.
#
# Layout in `dir`:
#   q/<first id>.seg  segment files; each record is framed as  len:u16 crc:u32 data  (little
#                     endian; crc = crc32(data, len)). A record's id is the segment's first
#                     id plus its position, so ids cost no flash.
#   state0, state1    "seq head dropped crc": the oldest unacknowledged id and the dropped
#                     counter, written to the two slots in turn; the newest whole one counts.
#                     With several cursors (one per platform: one device, two clouds):
#                     "seq head dropped name=head name=head crc", head being the lowest.
#
# Why this shape (littlefs on a few MB of NOR flash, ~100 KB of RAM):
# - put() appends one record to the newest segment and closes the file: littlefs commits on
#   close, so the record is either wholly there or not. Nothing big is ever rewritten.
# - Flash wear: littlefs never programs a block twice, so each append-and-close copies the
#   segment's partly filled last block to a freshly erased one: one block erase per write,
#   however small (make bench: 1.00 erase and ~2 KB programmed per 100 B record). With
#   hold_ms, records that come less than hold_ms after the last write wait in a RAM buffer
#   (at most HOLD_BYTES, at most hold_ms plus one put) and go to flash together: one erase
#   per batch. Records put further apart than hold_ms are written at once, as without it.
#   The price is the loss window: a power cut loses the records still held (never acked
#   ones: read() serves only records on flash).
# - A torn record (possible on a PC filesystem killed mid-write) fails its CRC; reading stops
#   there and new records go to a fresh segment, so nothing is ever appended after garbage.
# - ack() only moves a number in RAM. The head is persisted every ACK_PERSIST acks, and
#   fully acknowledged segments are deleted, which persists progress by itself. After a
#   crash at most ACK_PERSIST-1 records are sent again (at-least-once), never one lost.
# - Full: whole oldest segments are dropped (counted, persisted before the delete), so the
#   flash used stays within max_bytes without any file being rewritten.
# - Reads stream from the files, a record at a time; a cursor remembers where the last read
#   ended so draining a backlog never rescans a segment.
# - Several consumers (Outbox(..., cursors=("tb", "blynk"))): each Cursor has its own head,
#   out-of-order ring and read position; a record leaves flash when the lowest head passes
#   its segment. All heads go in the one state line, so one two-slot write persists them
#   together (no file per cursor, no extra flash op). A cursor missing from the state (a
#   platform added) starts at the saved lowest head: what is still on flash; a name in the
#   state but not configured (a platform removed) is forgotten at the next save, so it
#   never holds records back. One cursor writes the one-cursor line, as before.
import os
import struct
from binascii import crc32
from time import ticks_diff, ticks_ms

ACK_PERSIST = 16  # persist the head at least every this many acks
PENDING = 512  # out-of-order acks are remembered this far beyond the head (one bit each)
_HDR = 6
HOLD_BYTES = 1024  # RAM buffer of held records, when hold_ms is set
ASIDE_BYTES = 4096  # <dir>/aside: readings a cloud refused every time (see set_aside)


class Cursor:
    """One consumer's place in the outbox (a platform's publisher): read() and ack() as on
    the Outbox, which serves its first cursor through its own read() and ack()."""

    def __init__(self, ob, name, head):
        self.ob = ob
        self.name = name
        self.head_id = head  # the oldest record this consumer has not acknowledged
        self._bits = bytearray(PENDING // 8)  # ring: bit id % PENDING = acked, id > head
        self._unsaved = 0  # acks since the heads were last persisted
        self._pos = None  # (next id, segment first id, file offset) after the last read
        self._skip = None  # (first, end) ids found unreadable, for the head to step over

    @property
    def depth(self):
        return self.ob._next - self.head_id

    @property
    def dropped(self):
        return self.ob.dropped

    def read(self, after_id, n):
        return self.ob._read(self, after_id, n)

    def ack(self, id):
        self.ob._ack(self, id)

    def flush(self):
        self.ob.flush()

    def set_aside(self, id, data):
        return self.ob._set_aside(self, id, data)


class Outbox:
    def __init__(self, dir, max_bytes, segment_bytes=None, hold_ms=0, cursors=None):
        self.dir = dir.rstrip("/") or "."
        self.max_bytes = max_bytes
        # About 8 segments fit, so dropping one loses an eighth of the queue; small queues
        # get 4, so that a record of a few hundred bytes still fits in a segment.
        self.seg_bytes = segment_bytes or max(min(4096, max_bytes // 8), min(1024, max_bytes // 4))
        self.max_record = min(65535, self.seg_bytes - _HDR, max_bytes // 4)
        self._hdr = bytearray(_HDR)
        self._names = tuple(cursors or ("",))
        self._lost_to = 0  # unreadable ids below this are counted in dropped already
        self._hold = hold_ms
        cap = min(HOLD_BYTES, self.seg_bytes) if hold_ms > 0 else 0
        self._buf = bytearray(cap)  # held records, framed as on flash: _buf[:_held]
        self._bm = memoryview(self._buf)
        self._held = 0
        self._wrote = None  # ticks_ms() of the last write to flash
        _makedirs(self.dir + "/q")
        self._open()

    # -- public ----------------------------------------------------------------------------
    @property
    def depth(self):
        return self._next - self.head_id

    @property
    def size(self):
        # Bytes on flash: whole segments, acknowledged records included until their segment
        # goes. This is what max_bytes bounds.
        return self._bytes

    def cursor(self, name):
        """The Cursor of consumer `name` (one of `cursors`), or None."""
        for c in self.cursors:
            if c.name == name:
                return c
        return None

    def put(self, data):
        """Append a record and return its id: on flash when this returns, or, with hold_ms,
        within hold_ms (see the top of this file). When full, the oldest segments go."""
        n = len(data)
        if not 0 < n <= self.max_record:
            raise ValueError("record of %d bytes (1..%d)" % (n, self.max_record))
        rec = _HDR + n
        held = self._held
        if held and held + rec > len(self._buf):
            self._write_held()
            held = 0
        h = self._hdr
        struct.pack_into("<HI", h, 0, n, crc32(data, n) & 0xFFFFFFFF)
        i = self._next
        if held + rec <= len(self._buf):
            b = self._bm
            b[held : held + _HDR] = h
            b[held + _HDR : held + rec] = data
            self._held = held + rec
            self._next = i + 1
            w = self._wrote
            # (a span past ticks_diff's range counts as long ago)
            if w is None or not 0 <= ticks_diff(ticks_ms(), w) < self._hold:
                self._write_held()
            return i
        self._write((h, data), rec, 1)
        self._next = i + 1
        return i

    def _write_held(self):
        held = self._held
        if held:
            self._held = 0
            self._write((self._bm[:held],), held, self._next - self._flashed)

    def _write(self, parts, size, count):
        # Append `count` framed records (`size` bytes in `parts`) to the newest segment.
        self._wrote = ticks_ms()
        sizes = self._sizes
        if not sizes or self._sealed or (sizes[-1] and sizes[-1] + size > self.seg_bytes):
            self._roll()
        while self._bytes + size > self.max_bytes and len(self._segs) > 1:
            self._drop_oldest()
        path = self._path(self._segs[-1])
        try:
            with open(path, "ab") as f:
                for p in parts:
                    f.write(p)
        except BaseException:
            # Flash full, or the write was cut short: whatever landed must never have
            # records appended after it. Held records that were not written are gone, and
            # their ids go to the next records (no one has read them).
            if sizes[-1]:
                self._sealed = True
            else:
                _remove_quietly(path)
            self._next = self._flashed
            raise
        sizes[-1] += size
        self._bytes += size
        self._flashed += count

    def read(self, after_id, n):
        """Up to n records [(id, data)] with id > after_id, oldest first (first cursor)."""
        return self._read(self.cursors[0], after_id, n)

    def _read(self, c, after_id, n):
        out = []
        i = max(after_id + 1, c.head_id)
        while len(out) < n and i < self._flashed:
            k = self._seg_index(i)
            if k < 0:
                break
            i = self._read_seg(c, k, i, n, out)
        return out

    def ack(self, id):
        """Record `id` was delivered (first cursor). Unknown or already dropped ids are
        ignored."""
        self._ack(self.cursors[0], id)

    def set_aside(self, id, data):
        """Record `id` (first cursor) is one the cloud refuses every time (uplink.publisher):
        see _set_aside."""
        return self._set_aside(self.cursors[0], id, data)

    def _set_aside(self, c, id, data):
        # Kept for the user in <dir>/aside, a line each: the cursor's name, a tab, the record
        # as stored; then acknowledged, so the queue moves on. True if kept: past ASIDE_BYTES
        # it is only counted (publisher.set_aside, in health) and named on the console.
        path = self.dir + "/aside"
        try:
            size = os.stat(path)[6]
        except OSError:
            size = 0
        kept = size + len(c.name) + len(data) + 2 <= ASIDE_BYTES
        if kept:
            try:
                with open(path, "ab") as f:
                    f.write(c.name.encode() + b"\t" + data + b"\n")
            except OSError:
                kept = False
        self._ack(c, id)
        return kept

    def _ack(self, c, id):
        if id < c.head_id or id >= self._flashed:
            return
        if id != c.head_id:
            # out of order: remember it for when the head gets here. Beyond the ring it is
            # forgotten and simply sent again when the publisher rereads from the head.
            if id - c.head_id < PENDING:
                k = id % PENDING
                c._bits[k >> 3] |= 1 << (k & 7)
            return
        self._move_head(c, id + 1)
        c._unsaved += 1
        try:
            if not self._delete_consumed() and c._unsaved >= ACK_PERSIST:
                self._save()
        except OSError:
            pass  # flash full or failing: the head is right in RAM, the next ack tries again

    def flush(self):
        """Write held records and persist the heads now (e.g. before a planned reset)."""
        self._write_held()
        for c in self.cursors:
            if c._unsaved:
                self._save()
                return

    close = flush

    # -- internals -------------------------------------------------------------------------
    def _path(self, first):
        return "%s/q/%d.seg" % (self.dir, first)

    def _open(self):
        head, self.dropped, named = self._load_state()
        segs = []
        for e in os.ilistdir(self.dir + "/q"):
            name = e[0]
            if name.endswith(".seg"):
                try:
                    segs.append(int(name[:-4]))
                except ValueError:
                    pass
        segs.sort()
        self._segs = segs
        self._sealed = False
        # ids never go back below any saved head: a cursor there must see new records
        top = head
        for v in named.values():
            top = max(top, v)
        self._next = top
        count = 0
        while segs:
            count, end, fsize = self._scan(segs[-1])
            if fsize == end:
                break
            # Torn last write: never append after it. An all-garbage segment goes (its name
            # is the next segment's); otherwise new records start a new segment.
            if count:
                self._sealed = True
                break
            os.remove(self._path(segs.pop()))
        # sizes of the segments, kept in RAM: a stat in a big littlefs directory is slow
        self._sizes = [os.stat(self._path(s))[6] for s in segs]
        self._bytes = sum(self._sizes)
        if segs:
            self._next = segs[-1] + count
        self._next = max(self._next, top, 1)
        self._flashed = self._next  # the id after the last record on flash
        low = segs[0] if segs else self._next
        self.cursors = []
        for name in self._names:
            h = named.get(name, head)  # a cursor not saved yet starts at the lowest head
            self.cursors.append(Cursor(self, name, min(max(h, low, 1), self._next)))
        self._heads_moved()
        self._delete_consumed()

    def _scan(self, first):
        # (valid records, offset after the last valid one, file size) of one segment
        count = end = 0
        with open(self._path(first), "rb") as f:
            while True:
                n = self._valid_record(f)
                if n is None:
                    break
                count += 1
                end += _HDR + n
            f.seek(0, 2)
            return count, end, f.tell()

    def _valid_record(self, f, want=False):
        # Read one record at f's position: its length (or data when `want`), None at the end
        # or at a torn/corrupt record.
        h = self._hdr
        if f.readinto(h) != _HDR:
            return None
        n, crc = struct.unpack_from("<HI", h)
        if n == 0:
            return None
        data = f.read(n)
        if len(data) != n or crc32(data, n) & 0xFFFFFFFF != crc:
            return None
        return data if want else n

    def _seg_index(self, i):
        segs = self._segs
        k = len(segs) - 1
        while k >= 0 and segs[k] > i:
            k -= 1
        return k

    def _read_seg(self, c, k, i, n, out):
        # Append records from segment k starting at id i to out; return the next id to read.
        first = self._segs[k]
        last = self._segs[k + 1] if k + 1 < len(self._segs) else self._flashed
        p = c._pos
        with open(self._path(first), "rb") as f:
            if p and p[0] == i and p[1] == first:
                f.seek(p[2])
            else:
                j = first
                while j < i:  # skip to record i, headers only
                    if f.readinto(self._hdr) != _HDR:
                        return last
                    f.seek(struct.unpack_from("<H", self._hdr)[0], 1)
                    j += 1
            while i < last and len(out) < n:
                data = self._valid_record(f, True)
                if data is None:
                    self._lost(c, i, last)
                    return last
                out.append((i, data))
                i += 1
            c._pos = (i, first, f.tell())
        return i

    def _lost(self, c, i, last):
        # Records i..last-1 are unreadable (flash corruption inside an old segment): count
        # them as dropped (once, whichever cursor finds them) and let the head step over
        # them once it gets there.
        c._pos = None
        if c._skip is None or c._skip[0] != i:
            self.dropped += max(0, last - max(i, self._lost_to))
            self._lost_to = max(self._lost_to, last)
            c._skip = (i, last)
            if c.head_id == i:
                self._move_head(c, i)

    def _move_head(self, c, h):
        # Move c's head to h and on over ids acked out of order or found unreadable, then
        # clear the ring bits of every id passed (their slots belong to later ids now).
        old = c.head_id
        b = c._bits
        while True:
            sk = c._skip
            if sk and h >= sk[0]:
                h = max(h, sk[1])
                c._skip = None
            while h < self._flashed and h - old < PENDING and b[(h % PENDING) >> 3] & (1 << (h % PENDING & 7)):
                h += 1
            if not (c._skip and h >= c._skip[0]):
                break
        if h - old >= PENDING:
            for k in range(len(b)):
                b[k] = 0
        else:
            for i in range(old, h):
                k = i % PENDING
                b[k >> 3] &= ~(1 << (k & 7))
        c.head_id = h
        self._heads_moved()

    def _heads_moved(self):
        # the outbox's head: the lowest cursor's; segments below it are done for everyone
        h = self.cursors[0].head_id
        for c in self.cursors:
            if c.head_id < h:
                h = c.head_id
        self.head_id = h

    def _delete_consumed(self):
        # Remove segments whose records are all acknowledged (never the tail: it names the
        # next id). The deletion itself persists the progress.
        segs = self._segs
        done = False
        while len(segs) > 1 and segs[1] <= self.head_id:
            self._remove(segs[0])
            done = True
        return done

    def _drop_oldest(self):
        segs = self._segs
        end = segs[1]
        lost = end - max(self.head_id, segs[0])
        if lost > 0:
            self.dropped += lost
        for c in self.cursors:
            if c.head_id < end:
                self._move_head(c, end)
        # Counter first, delete second: a crash in between never under-counts.
        self._save()
        self._remove(segs[0])

    def _remove(self, first):
        _remove_quietly(self._path(first))
        self._bytes -= self._sizes.pop(0)
        self._segs.pop(0)
        for c in self.cursors:
            if c._pos and c._pos[1] == first:
                c._pos = None

    def _roll(self):
        # Start a new segment at the next id on flash; its file appears with its first write.
        self._segs.append(self._flashed)
        self._sizes.append(0)
        self._sealed = False

    def _load_state(self):
        # The newer of the two slots that is whole: (head, dropped, {name: head}); (1, 0,
        # {}) when neither is.
        best = (0, 1, 0, ())
        for k in (0, 1):
            try:
                with open("%s/state%d" % (self.dir, k), "rb") as f:
                    parts = f.read().split()
                if len(parts) < 4 or crc32(b" ".join(parts[:-1])) != int(parts[-1]):
                    continue
                if int(parts[0]) > best[0]:
                    best = (int(parts[0]), int(parts[1]), int(parts[2]), parts[3:-1])
            except (OSError, ValueError):
                pass
        self._seq = best[0]
        named = {}
        for p in best[3]:
            i = p.find(b"=")
            if i > 0:
                try:
                    named[p[:i].decode()] = int(p[i + 1 :])
                except ValueError:
                    pass
        return best[1], best[2], named

    def _save(self):
        # Two slots written in turn, each checked by a CRC: a write cut short spoils only
        # the slot being written. (A temp file + rename would be as safe, but a littlefs
        # rename in a directory of segments costs ten times more.)
        self._seq += 1
        line = b"%d %d %d" % (self._seq, self.head_id, self.dropped)
        cs = self.cursors
        if len(cs) > 1:
            for c in cs:
                line += b" %s=%d" % (c.name.encode(), c.head_id)
        with open("%s/state%d" % (self.dir, self._seq & 1), "wb") as f:
            f.write(b"%s %d\n" % (line, crc32(line)))
        for c in cs:
            c._unsaved = 0


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _makedirs(path):
    parts = path.split("/")
    for k in range(1, len(parts) + 1):
        p = "/".join(parts[:k])
        if p and parts[k - 1] not in ("", "."):
            try:
                os.mkdir(p)
            except OSError:
                pass  # exists
