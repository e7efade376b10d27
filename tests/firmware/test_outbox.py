import os

from mptest import heapsize, raises
from outbox_util import drain, rec, rmtree, tmpdir
from uplink import outbox
from uplink.outbox import Outbox


def test_fifo_put_read_ack():
    d = tmpdir()
    ob = Outbox(d, 32768)
    assert ob.depth == 0 and ob.read(0, 5) == []
    ids = [ob.put(rec(i)) for i in range(5)]
    assert ids == list(range(ids[0], ids[0] + 5))
    assert ob.depth == 5 and ob.head_id == ids[0]
    got = ob.read(0, 3)
    assert got == [(ids[0], rec(0)), (ids[1], rec(1)), (ids[2], rec(2))]
    assert ob.read(ids[2], 10) == [(ids[3], rec(3)), (ids[4], rec(4))]
    ob.ack(ids[0])
    ob.ack(ids[1])
    assert ob.depth == 3 and ob.head_id == ids[2]
    # reading "from the start" now starts at the head
    assert ob.read(0, 1) == [(ids[2], rec(2))]
    rmtree(d)


def test_reopen_keeps_unacked_and_ids_keep_growing():
    d = tmpdir()
    ob = Outbox(d, 32768)
    ids = [ob.put(rec(i)) for i in range(40)]
    for i in ids[:25]:
        ob.ack(i)
    ob2 = Outbox(d, 32768)
    got = drain(ob2)
    # lazily persisted head: some acked ones may come back, never an unacked one missing
    assert [g[0] for g in got][-15:] == ids[25:]
    assert len(got) <= 15 + outbox.ACK_PERSIST - 1
    for i, data in got:
        assert data == rec(i - ids[0])
    assert ob2.put(b"next") == ids[-1] + 1
    # flush() persists the head exactly
    for i, _ in got:
        ob2.ack(i)
    ob2.flush()
    ob3 = Outbox(d, 32768)
    assert drain(ob3) == [(ids[-1] + 1, b"next")]
    rmtree(d)


def test_everything_acked_then_reopen_never_reuses_ids():
    d = tmpdir()
    ob = Outbox(d, 4096)
    last = 0
    for i in range(200):
        last = ob.put(rec(i))
        ob.ack(last)
    assert ob.depth == 0
    ob.flush()
    ob2 = Outbox(d, 4096)
    assert ob2.depth == 0 and ob2.read(0, 5) == []
    assert ob2.put(b"again") == last + 1
    rmtree(d)


def test_full_drops_oldest_counts_and_persists():
    d = tmpdir()
    ob = Outbox(d, 4096)
    ids = [ob.put(rec(i)) for i in range(200)]
    assert ob.size <= 4096
    assert ob.dropped > 0
    assert ob.depth + ob.dropped == 200
    got = drain(ob)
    # what is left is the newest records, contiguous, intact
    assert [g[0] for g in got] == ids[-len(got):]
    for i, data in got:
        assert data == rec(i - ids[0])
    # ids of dropped records are no-ops to ack
    ob.ack(ids[0])
    assert ob.depth == len(got)
    ob2 = Outbox(d, 4096)
    assert ob2.dropped == ob.dropped and ob2.depth == ob.depth
    # no file beyond the bound
    total = sum(os.stat(d + "/q/" + n)[6] for n in os.listdir(d + "/q"))
    assert total <= 4096
    rmtree(d)


def test_drop_skips_records_in_flight():
    # the publisher read records that then got dropped: acking them is a no-op and the
    # next read continues at the new head
    d = tmpdir()
    ob = Outbox(d, 2048)
    first = ob.put(rec(0))
    inflight = ob.read(0, 1)
    for i in range(1, 100):
        ob.put(rec(i))
    ob.ack(inflight[0][0])
    assert ob.head_id > first and ob.dropped > 0
    assert ob.read(inflight[0][0], 1)[0][0] == ob.head_id
    rmtree(d)


def test_out_of_order_acks():
    d = tmpdir()
    ob = Outbox(d, 32768)
    ids = [ob.put(rec(i)) for i in range(6)]
    ob.ack(ids[2])
    ob.ack(ids[1])
    assert ob.head_id == ids[0] and ob.depth == 6
    ob.ack(ids[0])
    assert ob.head_id == ids[3]
    ob.ack(ids[5])
    ob.ack(ids[4])
    ob.ack(ids[4])  # twice: harmless
    assert ob.depth == 3
    ob.ack(ids[3])
    assert ob.depth == 0
    ob.ack(999999)  # unknown
    ob.ack(-1)
    assert ob.depth == 0
    rmtree(d)


def test_bad_records_rejected():
    d = tmpdir()
    ob = Outbox(d, 4096)
    with raises(ValueError, "bytes"):
        ob.put(b"")
    with raises(ValueError, "bytes"):
        ob.put(b"x" * 4096)
    assert ob.depth == 0
    rmtree(d)


def test_torn_tail_is_ignored_and_never_appended_after():
    d = tmpdir()
    ob = Outbox(d, 32768)
    ids = [ob.put(rec(i)) for i in range(3)]
    seg = [n for n in os.listdir(d + "/q") if n.endswith(".seg")][0]
    with open(d + "/q/" + seg, "ab") as f:  # a record cut short: header and half the data
        f.write(b"\x64\x00\x01\x02\x03\x04reading")
    ob2 = Outbox(d, 32768)
    assert drain(ob2) == [(ids[0], rec(0)), (ids[1], rec(1)), (ids[2], rec(2))]
    n = ob2.put(rec(3))
    assert n == ids[2] + 1
    ob3 = Outbox(d, 32768)
    assert [g[0] for g in drain(ob3)] == ids + [n]
    assert drain(ob3)[-1][1] == rec(3)
    rmtree(d)


def test_torn_first_record_of_a_segment():
    d = tmpdir()
    ob = Outbox(d, 32768)
    a = ob.put(b"one")
    ob.flush()
    with open("%s/q/%d.seg" % (d, a + 1), "wb") as f:  # a new segment, its first write torn
        f.write(b"\x10\x00\xaa")
    ob2 = Outbox(d, 32768)
    assert drain(ob2) == [(a, b"one")]
    b = ob2.put(b"two")
    assert b == a + 1
    assert drain(Outbox(d, 32768)) == [(a, b"one"), (b, b"two")]
    rmtree(d)


def test_corrupt_record_in_old_segment_is_counted_and_stepped_over():
    d = tmpdir()
    ob = Outbox(d, 8192, segment_bytes=1024)
    ids = [ob.put(rec(i)) for i in range(30)]
    segs = sorted(int(n[:-4]) for n in os.listdir(d + "/q") if n.endswith(".seg"))
    assert len(segs) >= 3
    # flip a byte in the 2nd record of the first segment: it and the rest of that
    # segment become unreadable
    p = "%s/q/%d.seg" % (d, segs[0])
    with open(p, "rb") as f:
        b = bytearray(f.read())
    b[106 + 20] ^= 0xFF
    with open(p, "wb") as f:
        f.write(b)
    ob2 = Outbox(d, 8192, segment_bytes=1024)
    got = drain(ob2)
    assert got[0] == (ids[0], rec(0))
    assert got[1][0] == segs[1]  # the rest of segment 0 is gone
    assert ob2.dropped == segs[1] - ids[1]
    for i, _ in got:
        ob2.ack(i)
    assert ob2.depth == 0
    rmtree(d)


def test_batched_reads_across_segments():
    d = tmpdir()
    ob = Outbox(d, 65536, segment_bytes=700)
    ids = [ob.put(rec(i, 20 + i % 50)) for i in range(150)]
    after, seen, k = 0, [], 0
    while True:
        got = ob.read(after, 1 + k % 7)
        k += 1
        if not got:
            break
        seen.extend(got)
        after = got[-1][0]
        if k % 3 == 0:
            ob.ack(got[0][0])  # mostly in order, some gaps
    assert [s[0] for s in seen] == ids
    for i, data in seen:
        assert data == rec(i - ids[0], 20 + (i - ids[0]) % 50)
    # re-read from an earlier point (the publisher resends after a reconnect)
    assert ob.read(ids[100], 2) == [(ids[101], seen[101][1]), (ids[102], seen[102][1])]
    rmtree(d)


def test_ack_persists_lazily_not_per_ack():
    d = tmpdir()
    ob = Outbox(d, 65536)
    ids = [ob.put(rec(i)) for i in range(100)]
    saves = [0]
    real = ob._save

    def counting():
        saves[0] += 1
        real()

    ob._save = counting
    for i in ids:
        ob.ack(i)
    assert saves[0] <= 100 // outbox.ACK_PERSIST + 1, saves[0]
    rmtree(d)


@heapsize("96k")
def test_big_backlog_streams_within_a_small_heap():
    # 3000 records (~320 KB on disk) in a 96 KB heap: nothing loads the whole queue
    d = tmpdir()
    ob = Outbox(d, 400000)
    for i in range(3000):
        ob.put(rec(i))
    ob = Outbox(d, 400000)
    assert ob.depth == 3000
    n, after = 0, 0
    while True:
        got = ob.read(after, 20)
        if not got:
            break
        for i, data in got:
            assert data == rec(n)
            n += 1
            ob.ack(i)
        after = got[-1][0]
    assert n == 3000 and ob.depth == 0
    rmtree(d)


def test_acks_in_reverse_over_a_whole_window():
    # the publisher has window x batch records in flight; PUBACKs may come back in any order
    d = tmpdir()
    ob = Outbox(d, 65536)
    ids = [ob.put(rec(i, 30)) for i in range(200)]
    for i in reversed(ids[1:]):
        ob.ack(i)
    assert ob.head_id == ids[0] and ob.depth == 200
    ob.ack(ids[0])
    assert ob.depth == 0
    rmtree(d)


def test_ack_beyond_the_ring_is_forgotten_then_resent():
    d = tmpdir()
    ob = Outbox(d, 1 << 20)
    ids = [ob.put(rec(i, 20)) for i in range(outbox.PENDING + 10)]
    far = ids[outbox.PENDING + 5]
    ob.ack(far)  # too far ahead to remember
    for i in ids[: outbox.PENDING + 5]:
        ob.ack(i)
    assert ob.head_id == far  # forgotten: the publisher sends it again ...
    assert ob.read(0, 1)[0][0] == far
    ob.ack(far)  # ... and acks it again
    assert ob.head_id == far + 1
    rmtree(d)


def test_head_jump_leaves_no_stale_acks():
    # an id acked out of order and then dropped must not make the later id that shares its
    # ring slot look acknowledged
    d = tmpdir()
    ob = Outbox(d, 40000, segment_bytes=4096)
    first = ob.put(rec(0, 50))
    ob.put(rec(1, 50))
    ob.ack(first + 1)  # out of order, remembered in the ring
    n = 2
    while not ob.dropped:
        ob.put(rec(n, 50))
        n += 1
    assert ob.head_id > first + 1
    twin = first + 1 + outbox.PENDING  # same slot
    assert ob._next > twin
    for i in range(ob.head_id, twin):
        ob.ack(i)
    assert ob.head_id == twin, (ob.head_id, twin)
    rmtree(d)


class _TornFile:
    # a file whose write stores half the bytes and fails: a full disk, an I/O error
    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.f.close()

    def write(self, b):
        self.f.write(b[: len(b) // 2])
        raise OSError(28)


def _put_torn(ob, data):
    def torn_open(path, mode="r"):
        return _TornFile(open(path, mode))

    outbox.open = torn_open
    try:
        with raises(OSError):
            ob.put(data)
    finally:
        del outbox.open


def test_failed_write_is_never_appended_after():
    d = tmpdir()
    ob = Outbox(d, 32768)
    good = [(ob.put(rec(i)), rec(i)) for i in range(3)]
    _put_torn(ob, rec(99))
    good += [(ob.put(rec(i)), rec(i)) for i in range(3, 6)]
    assert drain(ob) == good
    assert drain(Outbox(d, 32768)) == good
    rmtree(d)


def test_failed_first_write_of_a_segment():
    d = tmpdir()
    ob = Outbox(d, 32768)
    _put_torn(ob, rec(99))
    good = [(ob.put(rec(i)), rec(i)) for i in range(3)]
    assert drain(ob) == good
    assert drain(Outbox(d, 32768)) == good
    rmtree(d)


def test_state_slot_torn_falls_back_to_the_other():
    d = tmpdir()
    ob = Outbox(d, 2048)
    ids = [ob.put(rec(i)) for i in range(40)]  # drops some: dropped > 0 is saved
    dropped = ob.dropped
    assert dropped > 0
    live = [r for r, _ in drain(ob)]
    ob.ack(live[0])
    ob.flush()
    older_head = ob.head_id
    ob.ack(live[1])
    ob.flush()  # the newer slot
    newer = "%s/state%d" % (d, ob._seq & 1)
    with open(newer, "rb") as f:
        text = f.read()
    with open(newer, "wb") as f:
        f.write(text[: len(text) // 2])  # cut short
    ob2 = Outbox(d, 2048)
    assert ob2.dropped == dropped and ob2.head_id == older_head
    assert [r for r, _ in drain(ob2)] == live[1:]
    # both slots gone bad: the queue still opens, from the oldest record on flash
    with open("%s/state%d" % (d, 1 - (ob._seq & 1)), "wb") as f:
        f.write(b"9 9 9 9\n")  # whole-looking but wrong check
    ob3 = Outbox(d, 2048)
    assert ob3.head_id <= live[1] and ob3.put(b"x") == ids[-1] + 1
    rmtree(d)
