# A committed update moving into ROMFS (uplink.ota_romfs) on littlefs (a RAM block device that
# loses power) and a ROMFS partition that loses it with the same supply: a power cut at every
# program/erase operation of the move must leave a board that boots the update, from its slot
# or from the partition, and a next boot that finishes the move. The image is checked by
# mounting it (MicroPython's own VfsRom reads it back).
import json
import os

import vfs
from mptest import heapsize, raises
from ramblockdev import EIO, RAMBlockDev
from uplink import ota_romfs, romfs_image

MNT = "/ram"
R = MNT + "/"
ROM = "/romtest"
PART = 12288
FILES = {
    "uplink/__init__.mpy": b"M" + bytes(range(256)) * 9,
    "uplink/mod.py": b"V = 2\n",
    "uplink/platforms/__init__.mpy": b"P" * 700,
    "uplink/platforms/thingsboard.mpy": bytes(i % 251 for i in range(3000)),
    "uplink/notes.txt": b"not a module, in the package all the same",
}
CFG = {"device": {"romfs": True}}


class Rom:
    """A ROMFS partition (ota_romfs.Rom's interface) on the block device's supply: its erases
    and writes count among the flash operations, and tear like them."""

    def __init__(self, dev, size=PART):
        self.dev = dev
        self.size = size
        self.buf = bytearray(size)
        self.wipe()

    def wipe(self):  # erased, reusing the buffer (a big allocation per run fragments the heap)
        for i in range(self.size):
            self.buf[i] = 0xFF

    def data(self):
        return memoryview(self.buf)

    def erase(self, n):
        for a in range(0, n, ota_romfs.SECTOR):
            self._op(a, b"\xff" * ota_romfs.SECTOR)

    def write(self, off, buf):
        self._op(off, buf)

    def done(self):
        pass

    def _op(self, a, data):
        r = self.dev._op()
        if r == "ok":
            self.buf[a:a + len(data)] = data
            return
        if r == "tear":
            self.buf[a:a + len(data) // 2] = data[:len(data) // 2]
        raise OSError(-EIO)


def _mkdirs(path):
    d = R
    for p in path.split("/")[:-1]:
        d += p
        try:
            os.mkdir(d)
        except OSError:
            pass
        d += "/"


def setup(dev):
    dev.unmount(MNT)
    dev.wipe()
    dev.format()
    dev.mount(MNT)
    with open(R + "slot.json", "w") as f:
        json.dump({"cur": "app_a", "prev": "", "sum": "ab"}, f)
    for p, data in FILES.items():
        _mkdirs("app_a/" + p)
        with open(R + "app_a/" + p, "wb") as f:
            f.write(data)


def read_tree(base, prefix=""):
    out = {}
    for e in os.ilistdir(base):
        p = prefix + e[0]
        if e[1] == 0x4000:
            out.update(read_tree(base + "/" + e[0], p + "/"))
        else:
            with open(base + "/" + e[0], "rb") as f:
                out[p] = f.read()
    return out


def in_rom(rom):
    """The files the partition's image holds, read through VfsRom; None if it is no image."""
    try:
        v = vfs.VfsRom(rom.buf)
    except OSError:
        return None
    vfs.mount(v, ROM)
    try:
        return read_tree(ROM)
    finally:
        vfs.umount(ROM)


def slot_pkg():
    try:
        return {"uplink/" + p: d for p, d in read_tree(R + "app_a/uplink").items()}
    except OSError:
        return None


@heapsize("160k")
def test_the_image_holds_the_slots_package_and_the_slot_lets_it_go():
    dev = RAMBlockDev(512, 80)
    setup(dev)
    rom = Rom(dev)
    n = ota_romfs.adopt("app_a", R, rom)
    assert in_rom(rom) == FILES
    assert n == romfs_image.size([("uplink", romfs_image.tree(R + "app_a/uplink"))]) if slot_pkg() else n > 0
    assert os.listdir(R + "app_a") == []  # the slot's copy went
    end = n + (-n % ota_romfs.SECTOR)
    assert n % 2 == 0 and rom.buf[n:end] == bytes(end - n) and rom.buf[end:] == b"\xff" * (PART - end)
    assert ota_romfs.due(CFG, R) is None  # moved: nothing to do at the next boot
    dev.unmount(MNT)


def test_only_a_committed_slot_with_its_package_is_due():
    dev = RAMBlockDev(512, 80)
    setup(dev)
    assert ota_romfs.due(CFG, R) == "app_a"
    assert ota_romfs.due({"device": {"romfs": False}}, R) is None
    on_trial, rolled_back = {"cur": "app_a", "trial": 1}, {"cur": "app_a", "failed": "app_b"}
    for s, want in ((on_trial, ""), (rolled_back, None), ({"cur": ""}, None)):
        with open(R + "slot.json", "w") as f:
            json.dump(s, f)
        assert ota_romfs.due(CFG, R) == want, s
    dev.unmount(MNT)


@heapsize("160k")
def test_a_partition_too_small_is_refused_before_anything_is_written():
    dev = RAMBlockDev(512, 80)
    setup(dev)
    rom = Rom(dev, 4096)
    with raises(OSError, "partition 4096"):
        ota_romfs.adopt("app_a", R, rom)
    assert rom.buf == b"\xff" * 4096 and slot_pkg() == FILES
    dev.unmount(MNT)


@heapsize("160k")
def test_a_power_cut_at_every_flash_operation_leaves_a_board_that_boots_the_update():
    dev = RAMBlockDev(512, 80)
    setup(dev)
    ota_romfs.adopt("app_a", R, Rom(dev))
    total = dev.writes
    want = FILES
    rom = Rom(dev)
    for cut in range(total + 1):
        setup(dev)
        rom.wipe()
        dev.writes = 0
        dev.cut = cut
        try:
            ota_romfs.adopt("app_a", R, rom)
        except OSError:
            pass
        dev.unmount(MNT)
        dev.power_on()
        dev.mount(MNT)
        # the boot after the cut imports the package from the slot, or (gone) from ROMFS
        pkg = slot_pkg()
        if pkg is not None:
            assert pkg == want, (cut, sorted(pkg))
            assert ota_romfs.due(CFG, R) == "app_a"
            ota_romfs.adopt("app_a", R, rom)  # that boot finishes the move
        assert in_rom(rom) == want, cut
        assert ota_romfs.due(CFG, R) is None, cut
    print("%d power cuts checked" % (total + 1))
    dev.unmount(MNT)
