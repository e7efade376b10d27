# Power cuts on littlefs: the outbox on VfsLfs2 over a RAM block device that dies after N
# program/erase operations, for every N across a workload. After "power on" the queue must
# open, hold every record put() returned for and that was not acknowledged (or account for
# it as dropped, oldest first), with the right contents, and accept new records.

from mptest import heapsize
from outbox_util import drain, rec
from ramblockdev import RAMBlockDev
from uplink.outbox import Outbox

MNT = "/ram"
DIR = MNT + "/outbox"


class Log:
    def __init__(self, n=1):
        self.stored = {}  # id -> data, put() returned
        self.acked = [set() for _ in range(n)]  # ack() returned, per cursor
        self.inflight = None  # data of the put() that was interrupted


def workload(log, max_bytes, seg, puts, ack_every, names=None):
    # With two cursors (two clouds), the second acks half as often and is down for a
    # stretch in the middle: the heads part, the slow one holds the segments.
    ob = Outbox(DIR, max_bytes, segment_bytes=seg, cursors=names)
    after = [0] * len(ob.cursors)
    for i in range(puts):
        data = rec(i, 40 + (i * 37) % 90)
        log.inflight = data
        log.stored[ob.put(data)] = data
        log.inflight = None
        for j, c in enumerate(ob.cursors):
            every = ack_every * (j + 1)
            if i % every != every - 1 or (j and puts // 3 <= i < puts // 2):
                continue
            got = c.read(after[j], 3)
            if got:
                after[j] = got[-1][0]
            if i % (5 * every) == every - 1:
                continue  # these never get a PUBACK: the head must wait for them
            # the last first: out-of-order acks must not move the head past the others
            for rid, _ in got[-1:] + got[:-1]:
                c.ack(rid)
                log.acked[j].add(rid)


def check(log, max_bytes, seg, cut, names=None):
    ob = Outbox(DIR, max_bytes, segment_bytes=seg, cursors=names)
    where = "cut %d: " % cut
    last = 0
    for j, c in enumerate(ob.cursors):
        got = drain(c)
        ids = [g[0] for g in got]
        for k, (rid, data) in enumerate(got):
            if rid in log.stored:
                assert data == log.stored[rid], where + "record %d changed" % rid
            else:
                # only the record being written may appear beyond what put() confirmed
                assert k == len(got) - 1 and data == log.inflight, where + "stray record %d" % rid
        present = set(ids)
        missing = [i for i in log.stored if i not in log.acked[j] and i not in present]
        for i in missing:
            assert i < c.head_id, where + "record %d unacked by cursor %d lost from the middle" % (i, j)
        assert len(missing) <= ob.dropped, where + "%d records lost, %d counted" % (len(missing), ob.dropped)
        last = max(last, ids[-1] if ids else 0)
    # it still works: a new record lands after everything else, for every cursor
    new = ob.put(b"after the cut")
    assert new > last, where + "id %d reused" % new
    for c in ob.cursors:
        assert drain(c)[-1] == (new, b"after the cut")
    for c in Outbox(DIR, max_bytes, segment_bytes=seg, cursors=names).cursors:
        assert drain(c)[-1] == (new, b"after the cut")


def sweep(max_bytes, seg, puts, ack_every, step, names=None):
    dev = RAMBlockDev(512, 64)
    dev.format()
    dev.mount(MNT)
    workload(Log(len(names or "x")), max_bytes, seg, puts, ack_every, names)
    total = dev.writes
    dev.unmount(MNT)
    cuts = 0
    for cut in range(0, total + 1, step):
        dev.wipe()
        dev.format()
        dev.mount(MNT)
        dev.writes = 0
        dev.cut = cut
        log = Log(len(names or "x"))
        try:
            workload(log, max_bytes, seg, puts, ack_every, names)
        except OSError:
            pass
        dev.unmount(MNT)
        dev.power_on()
        dev.mount(MNT)
        try:
            check(log, max_bytes, seg, cut, names)
        finally:
            dev.unmount(MNT)
        cuts += 1
    assert cuts > 20 and total > 50, (cuts, total)
    print("%d power cuts checked" % cuts)
    return total


@heapsize("128k")
def test_power_cut_at_every_write_without_drops():
    sweep(12000, 512, 40, 3, 1)


@heapsize("128k")
def test_power_cut_while_dropping_oldest():
    sweep(1536, 256, 60, 7, 1)


TWO = ("tb", "blynk")


@heapsize("128k")
def test_power_cut_at_every_write_two_cursors():
    sweep(12000, 512, 40, 3, 1, TWO)


@heapsize("128k")
def test_power_cut_while_dropping_oldest_two_cursors():
    # the slow cursor's records are dropped while the fast one keeps up
    sweep(1536, 256, 60, 3, 1, TWO)


@heapsize("128k")  # one heap size per file: the [py] run only takes the first size's tests
def test_flash_full_then_space_again():
    # max_bytes larger than the filesystem: put() fails with ENOSPC. The queue stays
    # consistent, and works again once acknowledged records free space.
    dev = RAMBlockDev(512, 24)
    dev.format()
    dev.mount(MNT)
    try:
        ob = Outbox(DIR, 65536, segment_bytes=1024)
        stored = []
        full = 0
        for i in range(400):
            try:
                stored.append((ob.put(rec(i, 90)), rec(i, 90)))
            except OSError:
                full += 1
                if full == 3:
                    break
        assert full == 3 and len(stored) > 20
        assert drain(ob) == stored
        assert drain(Outbox(DIR, 65536, segment_bytes=1024)) == stored
        for rid, _ in stored:
            ob.ack(rid)
        ob.flush()
        more = [(ob.put(rec(i, 90)), rec(i, 90)) for i in range(20)]
        assert drain(ob) == more
        assert drain(Outbox(DIR, 65536, segment_bytes=1024)) == more
    finally:
        dev.unmount(MNT)
