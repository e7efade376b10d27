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
    def __init__(self):
        self.stored = {}  # id -> data, put() returned
        self.acked = set()  # ack() returned
        self.inflight = None  # data of the put() that was interrupted


def workload(log, max_bytes, seg, puts, ack_every):
    ob = Outbox(DIR, max_bytes, segment_bytes=seg)
    after = 0
    for i in range(puts):
        data = rec(i, 40 + (i * 37) % 90)
        log.inflight = data
        log.stored[ob.put(data)] = data
        log.inflight = None
        if i % ack_every == ack_every - 1:
            got = ob.read(after, 3)
            if got:
                after = got[-1][0]
            if i % (5 * ack_every) == ack_every - 1:
                continue  # these never get a PUBACK: the head must wait for them
            # the last first: out-of-order acks must not move the head past the others
            for rid, _ in got[-1:] + got[:-1]:
                ob.ack(rid)
                log.acked.add(rid)


def check(log, max_bytes, seg, cut):
    ob = Outbox(DIR, max_bytes, segment_bytes=seg)
    got = drain(ob)
    ids = [g[0] for g in got]
    where = "cut %d: " % cut
    for k, (rid, data) in enumerate(got):
        if rid in log.stored:
            assert data == log.stored[rid], where + "record %d changed" % rid
        else:
            # only the record being written may appear beyond what put() confirmed
            assert k == len(got) - 1 and data == log.inflight, where + "stray record %d" % rid
    present = set(ids)
    missing = [i for i in log.stored if i not in log.acked and i not in present]
    for i in missing:
        assert i < ob.head_id, where + "unacked record %d lost from the middle" % i
    assert len(missing) <= ob.dropped, where + "%d records lost, %d counted" % (len(missing), ob.dropped)
    # it still works: a new record lands after everything else
    new = ob.put(b"after the cut")
    assert not ids or new > ids[-1], where + "id %d reused" % new
    assert drain(ob)[-1] == (new, b"after the cut")
    assert drain(Outbox(DIR, max_bytes, segment_bytes=seg))[-1] == (new, b"after the cut")


def sweep(max_bytes, seg, puts, ack_every, step):
    dev = RAMBlockDev(512, 64)
    dev.format()
    dev.mount(MNT)
    workload(Log(), max_bytes, seg, puts, ack_every)
    total = dev.writes
    dev.unmount(MNT)
    cuts = 0
    for cut in range(0, total + 1, step):
        dev.wipe()
        dev.format()
        dev.mount(MNT)
        dev.writes = 0
        dev.cut = cut
        log = Log()
        try:
            workload(log, max_bytes, seg, puts, ack_every)
        except OSError:
            pass
        dev.unmount(MNT)
        dev.power_on()
        dev.mount(MNT)
        try:
            check(log, max_bytes, seg, cut)
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
