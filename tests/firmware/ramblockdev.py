# An in-memory block device with the extended interface (readblocks/writeblocks with an
# offset, ioctl erase), for VfsLfs2 in tests. It can lose power: after `cut` more
# program/erase operations, the next one is torn (half of its bytes land) and it and every
# later one fail with EIO, like a supply that dies mid-write. power_on() restores service;
# the flash keeps whatever it had.
#
#   dev = RAMBlockDev(512, 64); dev.format(); dev.mount("/ram")
#   dev.cut = 10        # the 11th write tears
#   ...                 # OSError(EIO) from the filesystem
#   dev.unmount("/ram"); dev.power_on(); dev.mount("/ram")
import os

EIO = -5


class RAMBlockDev:
    def __init__(self, block_size=512, blocks=64):
        self.bs = block_size
        self.n = blocks
        self.data = bytearray(block_size * blocks)
        self._ff = b"\xff" * block_size
        self.wipe()

    def wipe(self):
        # a factory-fresh chip, reusing the buffer (a big allocation per run fragments the heap)
        for b in range(self.n):
            self.data[b * self.bs : (b + 1) * self.bs] = self._ff
        self.cut = None
        self.dead = False
        self.writes = 0  # program + erase operations so far
        self.erases = 0  # block erases (flash wear)
        self.programmed = 0  # bytes programmed

    def _op(self):
        # "ok", "tear" (the power dies during this one) or "dead"
        self.writes += 1
        if self.dead:
            return "dead"
        if self.cut is not None:
            if self.cut <= 0:
                self.dead = True
                return "tear"
            self.cut -= 1
        return "ok"

    def readblocks(self, block, buf, offset=0):
        a = block * self.bs + offset
        buf[:] = self.data[a : a + len(buf)]

    def writeblocks(self, block, buf, offset=None):
        if offset is None:  # the simple interface: whole blocks, erase first
            for i in range(len(buf) // self.bs):
                if self.ioctl(6, block + i):
                    return EIO
            offset = 0
        a = block * self.bs + offset
        r = self._op()
        if r == "ok":
            self.data[a : a + len(buf)] = buf
            self.programmed += len(buf)
            return 0
        if r == "tear":
            h = len(buf) // 2
            self.data[a : a + h] = buf[:h]
        return EIO

    def ioctl(self, op, arg):
        if op == 4:  # block count
            return self.n
        if op == 5:  # block size
            return self.bs
        if op == 6:  # erase
            r = self._op()
            a = arg * self.bs
            if r == "ok":
                self.data[a : a + self.bs] = self._ff
                self.erases += 1
                return 0
            if r == "tear":
                h = self.bs // 2
                self.data[a : a + h] = self._ff[:h]
            return EIO
        return 0

    def format(self):
        os.VfsLfs2.mkfs(self)

    def mount(self, path):
        vfs = os.VfsLfs2(self)
        os.mount(vfs, path)
        return vfs

    def unmount(self, path):
        try:
            os.umount(path)
        except OSError:
            pass

    def power_on(self):
        self.cut = None
        self.dead = False
