# One outbox, several consumers (one device on two clouds): each platform's Cursor reads and
# acknowledges on its own; a record leaves flash only when every cursor has acknowledged it.
import os

from outbox_util import rec, rmtree, tmpdir
from uplink import outbox
from uplink.outbox import Outbox

TWO = ("tb", "blynk")


def drain_c(c, batch=10):
    out = []
    after = 0
    while True:
        got = c.read(after, batch)
        if not got:
            return out
        out.extend(got)
        after = got[-1][0]


def segs(d):
    return sorted(int(n[:-4]) for n in os.listdir(d + "/q") if n.endswith(".seg"))


def test_each_cursor_reads_everything_and_the_slowest_holds_the_head():
    d = tmpdir()
    ob = Outbox(d, 32768, segment_bytes=1024, cursors=TWO)
    tb, bl = ob.cursor("tb"), ob.cursor("blynk")
    assert ob.cursor("nope") is None and ob.cursors[0] is tb
    ids = [ob.put(rec(i)) for i in range(30)]
    assert drain_c(tb) == drain_c(bl) == [(i, rec(i - ids[0])) for i in ids]
    for i in ids:
        tb.ack(i)
    assert tb.depth == 0 and bl.depth == 30
    assert ob.head_id == ids[0] and ob.depth == 30  # blynk has not acked: all stay
    assert len(segs(d)) >= 3
    assert drain_c(tb) == [] and len(drain_c(bl)) == 30
    for i in ids[:20]:
        bl.ack(i)
    assert ob.head_id == ids[20] and bl.depth == 10
    assert segs(d)[0] <= ids[20]  # segments fully acked by both went; none that holds a record
    assert [g[0] for g in drain_c(bl)] == ids[20:]
    rmtree(d)


def test_out_of_order_acks_per_cursor():
    d = tmpdir()
    ob = Outbox(d, 32768, cursors=TWO)
    tb, bl = ob.cursors
    ids = [ob.put(rec(i)) for i in range(6)]
    tb.ack(ids[2])
    bl.ack(ids[0])
    assert tb.head_id == ids[0] and bl.head_id == ids[1] and ob.head_id == ids[0]
    tb.ack(ids[1])
    tb.ack(ids[0])
    assert tb.head_id == ids[3] and ob.head_id == ids[1]
    # an ack on one cursor is never taken as the other's
    assert [g[0] for g in drain_c(bl)] == ids[1:]
    rmtree(d)


def test_heads_persist_per_cursor_across_reopen():
    d = tmpdir()
    ob = Outbox(d, 32768, cursors=TWO)
    ids = [ob.put(rec(i)) for i in range(40)]
    for i in ids[:30]:
        ob.cursor("tb").ack(i)
    for i in ids[:7]:
        ob.cursor("blynk").ack(i)
    ob.flush()
    ob2 = Outbox(d, 32768, cursors=TWO)
    assert ob2.cursor("tb").head_id == ids[30] and ob2.cursor("blynk").head_id == ids[7]
    assert [g[0] for g in drain_c(ob2.cursor("tb"))] == ids[30:]
    assert [g[0] for g in drain_c(ob2.cursor("blynk"))] == ids[7:]
    # lazily persisted: at most ACK_PERSIST-1 acks per cursor come back, never a lost one
    for i in ids[30:]:
        ob2.cursor("tb").ack(i)
    for i in ids[7:20]:
        ob2.cursor("blynk").ack(i)
    ob3 = Outbox(d, 32768, cursors=TWO)
    assert ids[-1] + 1 - outbox.ACK_PERSIST < ob3.cursor("tb").head_id <= ids[-1] + 1
    assert ids[7] <= ob3.cursor("blynk").head_id <= ids[20]
    assert ob3.put(b"next") == ids[-1] + 1
    rmtree(d)


def test_a_removed_platform_no_longer_holds_records():
    d = tmpdir()
    ob = Outbox(d, 32768, segment_bytes=1024, cursors=TWO)
    ids = [ob.put(rec(i)) for i in range(30)]
    for i in ids:
        ob.cursor("tb").ack(i)
    ob.flush()
    assert ob.depth == 30  # blynk never acked
    # the config now names ThingsBoard only: its saved head counts, blynk's is forgotten
    one = Outbox(d, 32768, segment_bytes=1024, cursors=("tb",))
    assert one.depth == 0 and one.read(0, 5) == []
    assert len(segs(d)) == 1
    one.ack(one.put(b"x"))
    one.flush()
    with open(d + "/state%d" % (one._seq & 1)) as f:
        assert "blynk" not in f.read()  # one cursor: the one-cursor line, as before
    rmtree(d)


def test_an_added_platform_starts_at_what_is_still_on_flash():
    d = tmpdir()
    ob = Outbox(d, 32768)  # one platform, the one-cursor state line
    ids = [ob.put(rec(i)) for i in range(20)]
    for i in ids[:12]:
        ob.ack(i)
    ob.flush()
    two = Outbox(d, 32768, cursors=("thingsboard", "blynk"))
    # the old queue's head is the first platform's; the new one gets what is left on flash
    assert two.cursor("thingsboard").head_id == ids[12]
    assert two.cursor("blynk").head_id == ids[12]
    assert [g[0] for g in drain_c(two.cursor("blynk"))] == ids[12:]
    rmtree(d)


def test_full_while_one_cloud_is_down_drops_for_the_slow_cursor_only():
    d = tmpdir()
    ob = Outbox(d, 4096, segment_bytes=1024, cursors=TWO)
    tb, bl = ob.cursors
    last = 0
    for i in range(120):  # ThingsBoard keeps up; Blynk is down
        last = ob.put(rec(i))
        tb.ack(last)
    assert ob.size <= 4096 and tb.depth == 0
    assert ob.dropped > 0 and bl.depth == ob.depth
    got = drain_c(bl)
    assert got[-1] == (last, rec(119))
    assert got[0][0] == bl.head_id == ob.head_id
    assert len(got) + ob.dropped == 120
    ob.flush()
    ob2 = Outbox(d, 4096, segment_bytes=1024, cursors=TWO)
    assert ob2.dropped == ob.dropped and drain_c(ob2.cursor("blynk")) == got
    assert drain_c(ob2.cursor("tb")) == []
    rmtree(d)


def test_corrupt_records_are_counted_once_for_two_cursors():
    d = tmpdir()
    ob = Outbox(d, 8192, segment_bytes=1024, cursors=TWO)
    ids = [ob.put(rec(i)) for i in range(30)]
    s = segs(d)
    p = "%s/q/%d.seg" % (d, s[0])
    with open(p, "rb") as f:
        b = bytearray(f.read())
    b[106 + 20] ^= 0xFF  # the 2nd record of the first segment
    with open(p, "wb") as f:
        f.write(b)
    ob2 = Outbox(d, 8192, segment_bytes=1024, cursors=TWO)
    for c in ob2.cursors:
        got = drain_c(c)
        assert got[0] == (ids[0], rec(0)) and got[1][0] == s[1]
        for i, _ in got:
            c.ack(i)
        assert c.depth == 0
    assert ob2.dropped == s[1] - ids[1]
    assert ob2.depth == 0
    rmtree(d)


def test_interleaved_reads_keep_each_cursors_place():
    # two publishers read in turns: each read continues where that cursor stopped
    d = tmpdir()
    ob = Outbox(d, 65536, segment_bytes=700, cursors=TWO)
    ids = [ob.put(rec(i, 20 + i % 50)) for i in range(150)]
    after = [0, 0]
    seen = [[], []]
    k = 0
    while True:
        more = False
        for j, c in enumerate(ob.cursors):
            got = c.read(after[j], 1 + (k + j) % 7)
            if got:
                more = True
                seen[j].extend(g[0] for g in got)
                after[j] = got[-1][0]
        k += 1
        if not more:
            break
    assert seen[0] == ids and seen[1] == ids
    rmtree(d)
