# The updaters on littlefs (a RAM block device): ThingsBoard's and Blynk's deliveries with the
# cloud's side played here, the trial's health, refusals kept across resets, the room check,
# resuming a whole download, whole-block writes and ThingsBoard's other checksum algorithms.
import asyncio
import json
import os

from ramblockdev import RAMBlockDev

DEV = RAMBlockDev(512, 96)  # first: one 48 KB block while the heap is whole

import main  # noqa: E402
from mptest import heapsize, raises  # noqa: E402
from test_ota import CHUNK, MNT, R, bundle, fetch, fresh, update  # noqa: E402
from uplink import ota, ota_guard, ota_stage, ota_trial  # noqa: E402


class Reset(BaseException):  # (as a reset: no except Exception stops it)
    """The board's reset (ota.Updater.reset)."""


class Board:
    name = "host"

    def reset(self):
        raise Reset()


class Ctx:
    """uplink.context.Context's names an updater uses."""

    ota = None

    def __init__(self, client=None, health=None, reserve=0):
        self.client = client
        self.board = Board()
        self.cfg = {"device": {}, "outbox": {"max_bytes": reserve}}
        self.health = health

    def fw(self):
        return ota.running("host", R)

    def user(self):  # (user.py, read() calls that returned): Context.user
        return self, 0 if self.health else 1


class TbSide:
    """ThingsBoard's OTA side as the device's MQTT session sees it: chunk requests answered
    from the package at once (v2/fw/response/...), fw_state telemetry recorded."""

    is_connected = True

    def __init__(self, data):
        self.data = data
        self.updater = None
        self.chunks = 0
        self.states = []

    async def publish(self, topic, payload, qos=0, retain=False, wait=True):
        if topic.startswith("v2/fw/request/"):
            _, _, _, rid, _, n = topic.split("/")
            size = int(payload)
            self.chunks += 1
            self.updater.on_chunk("v2/fw/response/%s/chunk/%s" % (rid, n), self.data[int(n) * size:(int(n) + 1) * size])
        elif topic == "v1/devices/me/telemetry":
            self.states.append(json.loads(payload))
        return 1


def tb_attrs(want, **more):
    a = {"fw_title": want["title"], "fw_version": want["version"], "fw_size": want["size"],
         "fw_checksum": want["sha256"], "fw_checksum_algorithm": "SHA256"}
    a.update(more)
    return a


async def tb_boot(side, attrs, **ctx):
    """One boot's ThingsBoard updater, told of `attrs`; returns it after its run (a reset ends it)."""
    from uplink import ota_thingsboard

    u = ota_thingsboard.Updater(Ctx(side, **ctx), R)
    side.updater = u
    u.announce(attrs)
    try:
        await u.run()
    except Reset:
        pass
    await asyncio.sleep_ms(10)  # the states said on the way (tasks) go out
    return u


@heapsize("128k")
async def test_a_refused_bundle_is_not_fetched_again_after_a_reset_another_one_is():
    dev = DEV
    fresh(dev)
    try:
        raw, want = bundle("2")
        side = TbSide(raw)
        await tb_boot(side, tb_attrs(want, fw_checksum="ab" * 32))
        assert side.states[-1]["fw_state"] == "FAILED" and "checksum mismatch" in side.states[-1]["fw_error"]
        fetched = side.chunks
        assert fetched >= want["size"] // 1024
        # a reset, and ThingsBoard still has the package's attributes: no second download, and
        # FAILED again (a cut may have kept the first one from ThingsBoard)
        u = await tb_boot(side, tb_attrs(want, fw_checksum="ab" * 32))
        assert u.want is None and side.chunks == fetched
        assert side.states[-1]["fw_state"] == "FAILED" and "checksum mismatch" in side.states[-1]["fw_error"]
        # another checksum (the package fixed) is tried
        await tb_boot(side, tb_attrs(want))
        assert side.chunks > fetched and side.states[-1]["fw_state"] == "UPDATING"
        assert main.slot(R) == "app_a"
        # the list is bounded: the oldest refusals go
        n = ota_guard.REFUSED_MAX
        for i in range(n + 2):
            ota_guard.refuse("%064x" % i, "why %d" % i, R)
        assert ota_guard.refused("%064x" % 0, R) is None
        assert ota_guard.refused("%064x" % (n + 1), R) == "why %d" % (n + 1)
        assert len(ota.load_json(R + ota.REFUSED)) == n
    finally:
        dev.unmount(MNT)


@heapsize("128k")
async def test_a_bundle_bigger_than_the_free_flash_is_refused_before_the_first_chunk():
    dev = DEV  # 48 KB
    fresh(dev)
    try:
        raw, want = bundle("2")
        side = TbSide(raw)
        await tb_boot(side, tb_attrs(want, fw_size=64 << 20))
        err = side.states[-1]["fw_error"]
        assert side.chunks == 0 and side.states[-1]["fw_state"] == "FAILED" and err.startswith("no room"), err
        # room for the bundle, not beside what the outbox may fill
        await tb_boot(side, tb_attrs(want), reserve=47000)
        assert side.chunks == 0 and side.states[-1]["fw_error"].startswith("no room")
        # not the bundle's fault: not remembered; with room it goes
        await tb_boot(side, tb_attrs(want))
        assert side.chunks and side.states[-1]["fw_state"] == "UPDATING" and main.slot(R) == "app_a"
    finally:
        dev.unmount(MNT)


@heapsize("128k")
def test_a_whole_download_is_resumed_not_fetched_again():
    # a cut while the whole part is checked or unpacked: the next boot checks it again
    dev = DEV
    fresh(dev)
    try:
        raw, want = bundle("2")
        assert len(raw) % CHUNK  # the last chunk is short: the case that was dropped
        st = ota_stage.Stage(want, CHUNK, R)
        fetch(st, raw, None)
        n = (len(raw) + CHUNK - 1) // CHUNK
        assert ota_stage.Stage(want, CHUNK, R).begin() == n
        st = ota_stage.Stage(want, CHUNK, R)
        st.begin()
        assert asyncio.run(st.verify("host"))["version"] == "2"
    finally:
        dev.unmount(MNT)


@heapsize("256k")  # (a second block device)
def test_the_download_is_written_in_whole_blocks_not_a_block_per_chunk():
    # littlefs copies a file's partly written last block at every append that reopens it:
    # 1 KB chunks each appended alone cost an erase apiece on the chip's 4 KB blocks
    dev = RAMBlockDev(4096, 10)  # 4 KB blocks, the chip's
    fresh(dev)
    try:
        raw, want = bundle("2", extra=b"#" * 16000)
        st = ota_stage.Stage(want, 1024, R)
        st.begin()
        e0 = dev.erases
        n = 0
        while st.add(raw[n * 1024:(n + 1) * 1024]) is False:
            n += 1
        erases = dev.erases - e0
        blocks = (len(raw) + 4095) // 4096
        assert erases <= blocks + 4, (erases, blocks)  # (+ the metadata's)
        assert asyncio.run(st.verify("host"))["version"] == "2"
        print("%d bytes in 1 KB chunks: %d erases" % (len(raw), erases))
    finally:
        dev.unmount(MNT)


@heapsize("128k")
def test_thingsboards_other_checksum_algorithms():
    from uplink import ota_sums

    # MurmurHash3 x86_32 seed 0, as Guava's HashCode prints it (the bytes little-endian)
    m = ota_sums.new("MURMUR3_32")
    m.update(b"The quick brown fox ")
    m.update(b"jumps over the lazy dog")
    assert m.hexdigest() == "23f74f2e"
    m = ota_sums.new("MURMUR3_32")
    m.update(b"hello")
    assert m.hexdigest() == "47fa8b24"
    c = ota_sums.new("CRC32")
    c.update(b"abc")
    assert c.hexdigest() == "c2412435"  # crc32 0x352441c2, little-endian
    dev = DEV
    fresh(dev)
    try:
        raw, want = bundle("2")
        for alg in ("MD5", "CRC32", "MURMUR3_32"):
            s = ota_sums.new(alg)
            s.update(raw)
            side = TbSide(raw)
            asyncio.run(tb_boot(side, tb_attrs(want, fw_checksum=s.hexdigest(), fw_checksum_algorithm=alg)))
            assert side.states[-1]["fw_state"] == "UPDATING", (alg, side.states)
            ota.write_slot({}, R)
            side = TbSide(raw)
            wrong = {"MD5": "a", "CRC32": "b"}.get(alg, "c") * len(s.hexdigest())  # (refused: not again)
            asyncio.run(tb_boot(side, tb_attrs(want, fw_checksum=wrong, fw_checksum_algorithm=alg)))
            assert ("checksum mismatch: got %s " % alg) in side.states[-1]["fw_error"], (alg, side.states)
        for alg in ("SHA384", "SHA512", "MURMUR3_128"):
            side = TbSide(raw)
            asyncio.run(tb_boot(side, tb_attrs(want, fw_checksum_algorithm=alg)))
            err = side.states[-1]["fw_error"]
            assert side.chunks == 0 and alg in err and "choose SHA256" in err, err
        # an external package without its size: FAILED with the reason, not ignored
        side = TbSide(raw)
        a = tb_attrs(want, fw_url="https://example.com/fw.uplb")
        del a["fw_size"]
        asyncio.run(tb_boot(side, a))
        assert side.chunks == 0 and "fw_url" in side.states[-1]["fw_error"] and "fw_size" in side.states[-1]["fw_error"]
    finally:
        dev.unmount(MNT)


@heapsize("128k")
def test_a_trial_keeps_the_new_app_only_once_it_reads_and_is_healthy():
    class Up:
        is_connected = True

    dev = DEV
    for health, kept in ((None, True), ("read() has not returned a reading", False)):
        fresh(dev)
        try:
            raw, want = bundle("2", commit_after_s=0, trial_s=1)
            update(raw, want)
            assert main.slot(R) == "app_a"
            u = ota.Updater(Ctx(Up(), health=health), R)
            try:
                asyncio.run(ota_trial.trial(u))
            except Reset:
                pass
            s = ota.read_slot(R)
            if kept:
                assert "trial" not in s and s["owe"] == ["UPDATED", None] and main.slot(R) == "app_a", s
            else:  # connected all along, never healthy: back to the old app, which says why
                assert s["failed"] == "app_a" and s["why"] == health and main.slot(R) == "", s
        finally:
            dev.unmount(MNT)


@heapsize("128k")
def test_trial_health_needs_a_reading_and_user_healthy():
    class U:
        def read(self):
            return {}

    u = U()
    assert ota_trial.unhealthy(u, 0) == "read() has not returned a reading"
    assert ota_trial.unhealthy(u, 1) is None
    u.healthy = lambda: False
    assert ota_trial.unhealthy(u, 1) == "user.healthy() returned False"
    u.healthy = lambda: 1 / 0
    assert ota_trial.unhealthy(u, 1).startswith("user.healthy() raised ZeroDivisionError")
    u.healthy = lambda: True
    assert ota_trial.unhealthy(u, 1) is None


@heapsize("128k")
def test_an_import_error_inside_user_py_is_a_crash_a_missing_user_py_is_no_user_code():
    import sys

    from uplink import app

    fresh(DEV)  # (the host's filesystem is not reachable once a block device was mounted)
    d = R + "u"
    os.mkdir(d)
    path = sys.path[:]
    sys.path[:] = [d]  # (the firmware's directory has a user.py template)
    try:
        sys.modules.pop("user", None)
        assert isinstance(app._import_user(), app._NoUser)
        with open(d + "/user.py", "w") as f:
            f.write("import a_driver_left_out\n")
        with raises(ImportError, "a_driver_left_out"):
            app._import_user()
    finally:
        sys.path[:] = path
        sys.modules.pop("user", None)
        DEV.unmount(MNT)


@heapsize("128k")
async def test_blynk_air_without_ver_knows_the_running_package_by_its_sha256():
    from uplink import ota_blynk

    dev = DEV
    fresh(dev)
    try:
        raw, want = bundle("2")
        update(raw, want)
        main.slot(R)
        ota.write_slot({"cur": "app_a", "prev": "", "sum": want["sha256"]}, R)  # committed
        url = "https://fra1.blynk.cloud/static/b.uplb"
        # what the download of this package left (ota_fetch): installed, with its x-sha256
        ota.save_json(R + ota.JOB, {"url": url, "src": url, "size": len(raw), "version": "", "installed": 1,
                                    "sha256": want["sha256"]})
        u = ota_blynk.Updater(Ctx(), R)
        # Blynk's notice again after info/mcu, no "ver" (no version tag in the file)
        u.announce({"url": url + "?token=x", "size": len(raw)})
        assert u.want is None
        # another package at that place (its size differs): a new job
        u.announce({"url": url + "?token=x", "size": len(raw) + 1})
        assert u.want is not None and u.want["size"] == len(raw) + 1
    finally:
        dev.unmount(MNT)
