# Flash wear on littlefs (VfsLfs2 over a RAM block device with the ESP32's 4 KB blocks, which
# counts erases): each durable put costs a block erase, so readings that come fast are held
# in RAM for at most hold_ms and written together. What a power cut may lose is exactly the
# held records, and what it leaves on flash opens whole.
import time

from mptest import heapsize
from outbox_util import drain, rec
from ramblockdev import RAMBlockDev
from uplink import outbox
from uplink.outbox import Outbox

MNT = "/ram"
DIR = MNT + "/outbox"


DEV = RAMBlockDev(4096, 24)  # one buffer for every test: 96 KB is a big allocation


def fresh():
    dev = DEV
    dev.wipe()
    dev.format()
    dev.mount(MNT)
    return dev


def erases_per_put(hold_ms, n=200):
    dev = fresh()
    try:
        ob = Outbox(DIR, 32768, hold_ms=hold_ms)
        e0 = dev.erases
        for i in range(n):
            ob.put(rec(i))
        ob.flush()
        per = (dev.erases - e0) / n
        assert [d for _, d in drain(Outbox(DIR, 32768))] == [rec(i) for i in range(n)]
        return per
    finally:
        dev.unmount(MNT)


@heapsize("256k")
def test_fast_readings_are_batched_into_far_fewer_erases():
    plain = erases_per_put(0)
    held = erases_per_put(60000)  # no put here is 60 s after the last write: all held
    # one erase per put without holding; a batch per HOLD_BYTES of records with it
    assert plain >= 0.9, plain
    per_batch = outbox.HOLD_BYTES // (len(rec(0)) + 6)
    assert held <= 2.0 / per_batch, (held, per_batch)


@heapsize("256k")
def test_held_records_are_the_loss_window_and_never_served():
    dev = fresh()
    try:
        ob = Outbox(DIR, 32768, hold_ms=60000)
        first = ob.put(rec(0))  # the first put after boot is written at once
        held = [ob.put(rec(i)) for i in (1, 2, 3)]
        assert ob.depth == 4
        assert drain(ob) == [(first, rec(0))]  # not offered to the broker before flash has it
        ob.ack(held[0])  # an id not on flash cannot be acknowledged
        assert ob.head_id == first
        # power cut now: the held three are lost, the rest opens whole, ids go on from there
        dev.unmount(MNT)
        dev.power_on()
        dev.mount(MNT)
        ob2 = Outbox(DIR, 32768, hold_ms=60000)
        assert drain(ob2) == [(first, rec(0))]
        again = ob2.put(rec(7))
        assert again == first + 1
        ob2.flush()  # flush() writes what is held
        assert drain(Outbox(DIR, 32768)) == [(first, rec(0)), (again, rec(7))]
    finally:
        dev.unmount(MNT)


@heapsize("256k")
def test_hold_is_bounded_by_time_and_by_bytes():
    dev = fresh()
    try:
        ob = Outbox(DIR, 32768, hold_ms=50)
        ob.put(rec(0))
        ob.put(rec(1))  # held
        assert len(drain(ob)) == 1
        time.sleep_ms(60)
        ob.put(rec(2))  # hold_ms after the last write: this one writes the batch
        assert len(drain(ob)) == 3
        # never more than HOLD_BYTES in RAM, whatever the rate
        ob = Outbox(DIR, 32768, hold_ms=60000)
        base = len(drain(ob))
        for i in range(40):
            ob.put(rec(i))
            on_flash = len(drain(ob)) - base
            assert (i + 1 - on_flash) * (len(rec(0)) + 6) <= outbox.HOLD_BYTES, (i, on_flash)
    finally:
        dev.unmount(MNT)


@heapsize("256k")
def test_a_torn_batch_is_never_appended_after():
    dev = fresh()
    try:
        ob = Outbox(DIR, 32768, hold_ms=60000)
        ob.put(rec(0))
        for i in range(1, 5):
            ob.put(rec(i))
        dev.cut = 0  # the batch's write tears
        try:
            ob.flush()
            raise AssertionError("flush survived a dead flash")
        except OSError:
            pass
        dev.unmount(MNT)
        dev.power_on()
        dev.mount(MNT)
        ob2 = Outbox(DIR, 32768, hold_ms=60000)
        got = drain(ob2)
        assert [d for _, d in got] == [rec(i) for i in range(len(got))], got
        assert len(got) in (1, 5), got  # littlefs commits a write whole or not at all
        nxt = ob2.put(rec(9))
        ob2.flush()
        assert drain(Outbox(DIR, 32768))[-1] == (nxt, rec(9))
    finally:
        dev.unmount(MNT)


@heapsize("256k")
def test_interval_ms_below_the_floor_is_a_config_error_naming_the_key():
    import json

    from mptest import raises
    from uplink import config

    def parse(ms):
        return config.parse(json.dumps({"device": {"name": "d"}, "platform": {"kind": "x"},
                                        "telemetry": {"interval_ms": ms}}))

    for ms in (1, config.MIN_INTERVAL_MS - 1):
        with raises(config.ConfigError, "telemetry.interval_ms") as r:
            parse(ms)
        assert "at least %d" % config.MIN_INTERVAL_MS in str(r.value), r.value
    assert parse(config.MIN_INTERVAL_MS)["telemetry"]["interval_ms"] == config.MIN_INTERVAL_MS
