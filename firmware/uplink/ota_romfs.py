# An update committed on a device whose firmware runs from ROMFS (device.romfs) moves into the
# ROMFS partition at the next boot: until then its uplink/ package runs from the OTA slot on
# the filesystem, its bytecode in the heap (docs/hardware.md, "Firmware in ROMFS").
#
# The boot that finds the running slot committed writes the slot's package as an image into
# the partition, checks it by sha256, then takes the package off the slot; the next boot
# imports it from /rom. The partition is never the only copy: the slot's package goes only
# after the image is checked, so a power cut anywhere leaves a slot that boots and a next boot
# that does it again (a partition that already holds the image is not written again). A
# rollback to the previous slot, whose package left for ROMFS before, finds its own version
# there: the partition changes only after a trial has committed.
import hashlib
import os

from uplink import log, romfs_image

PKG = "uplink"
OLD = ".uplink-old"  # the slot's package on its way out (renamed, then removed)
SECTOR = 4096


class Rom:
    """The ROMFS partition through vfs.rom_ioctl, as `uplink deploy` writes it
    (host_tools/romfs_deploy.py): the segment's own object where the port has one (the
    ESP32's esp32.Partition: erase with ioctl(6), writeblocks), else rom_ioctl's write
    commands (3 prepare, 4 write, 5 complete)."""

    def __init__(self):
        import vfs

        self.vfs = vfs
        if not hasattr(vfs, "rom_ioctl") or vfs.rom_ioctl(1) < 1:
            raise OSError(19, "no ROMFS partition")
        d = vfs.rom_ioctl(2, 0)
        if isinstance(d, int):
            raise OSError(19, "no ROMFS partition")
        self.obj = d if hasattr(d, "ioctl") else None
        self.size = d.ioctl(4, 0) * d.ioctl(5, 0) if self.obj else len(d)

    def data(self):
        return memoryview(self.vfs.rom_ioctl(2, 0))

    def erase(self, n):
        try:
            self.vfs.umount("/rom")  # (nothing is imported from it: the app runs from its slot)
        except OSError:
            pass
        if self.obj:
            for b in range((n + SECTOR - 1) // SECTOR):
                self.obj.ioctl(6, b)
        elif self.vfs.rom_ioctl(3, 0, n) < 0:
            raise OSError(5, "ROMFS prepare failed")

    def write(self, off, buf):
        if self.obj:
            self.obj.writeblocks(off // SECTOR, buf)
        elif self.vfs.rom_ioctl(4, 0, off, buf) < 0:
            raise OSError(5, "ROMFS write failed")

    def done(self):
        if not self.obj:
            self.vfs.rom_ioctl(5, 0)


def at_boot(cfg, board, runs_from):
    """The firmware runs from the filesystem (`runs_from`) on a device.romfs board: a kept
    update moves into ROMFS and the board resets into it; else a copy left on the filesystem
    comes first on sys.path, which only a deploy mends."""
    slot = due(cfg)
    if slot == "":
        log.info("boot", "the update on trial runs from its slot; kept, it moves into ROMFS")
        return
    if slot is not None:
        try:
            adopt(slot)
            log.info("boot", "the update in %s runs from ROMFS from the next boot: resetting" % slot)
            board.reset()
        except (OSError, MemoryError) as e:  # the slot boots as it is; the next boot tries again
            log.exc("boot", "cannot move the update in %s into ROMFS" % slot, e)
    log.warn("boot", "device.romfs is set, but the firmware runs from %s, not ROMFS: its bytecode "
             "takes the heap; `uplink deploy` puts it back (docs/hardware.md)" % runs_from)


def due(cfg, root=""):
    """The committed slot whose package should move into ROMFS now, "" for one on trial
    (it moves once kept), or None."""
    from uplink import ota

    s = ota.read_slot(root)
    cur = s.get("cur") or ""
    if not cfg["device"].get("romfs") or not cur or "failed" in s:
        return None
    if "trial" in s:
        return ""
    init = root + cur + "/" + PKG + "/__init__."
    return cur if ota._size(init + "mpy") >= 0 or ota._size(init + "py") >= 0 else None


def adopt(slot, root="", rom=None):
    """Move `slot`'s package into the ROMFS partition; its size in bytes. An OSError leaves
    the slot as it was (it boots, and the next boot tries again)."""
    rom = rom or Rom()
    base = root + slot
    top = [(PKG, romfs_image.tree(base + "/" + PKG))]
    n = romfs_image.size(top)
    if n > rom.size:
        raise OSError(28, "the update's ROMFS image is %d bytes, the partition %d" % (n, rom.size))
    buf = bytearray(1024)  # file reads; the sector gathers them for the partition
    h = hashlib.sha256()
    romfs_image.write(base, top, h.update, buf)
    want = h.digest()
    if n > len(rom.data()) or hashlib.sha256(rom.data()[:n]).digest() != want:
        _flash(rom, base, top, n, buf)
        if hashlib.sha256(rom.data()[:n]).digest() != want:
            raise OSError(5, "the ROMFS image reads back different from what was written")
    # the partition holds it, checked: the slot's copy goes (a rename, then at leisure)
    from uplink.ota_stage import _rmtree

    _rmtree(base + "/" + OLD)
    os.rename(base + "/" + PKG, base + "/" + OLD)
    _rmtree(base + "/" + OLD)
    return n


def _flash(rom, base, top, n, buf):
    padded = n + (-n % SECTOR)
    rom.erase(padded)
    sector = bytearray(SECTOR)
    at = [0, 0]  # bytes in sector, offset of the sector in the partition

    def out(b):
        while len(b):
            k = min(len(b), SECTOR - at[0])
            sector[at[0]:at[0] + k] = b[:k]
            at[0] += k
            b = b[k:]
            if at[0] == SECTOR:
                rom.write(at[1], sector)
                at[0] = 0
                at[1] += SECTOR

    romfs_image.write(base, top, out, buf)
    if at[0]:
        for i in range(at[0], SECTOR):
            sector[i] = 0
        rom.write(at[1], sector)
    rom.done()
    log.info("ota", "the update's firmware is in ROMFS now: %d bytes written" % n)
