"""`uplink deploy`'s file writes on a full littlefs board: the ESP32 model with a VfsLfs2 over a
RAM block device (tests/firmware/ramblockdev.py) filled to its last blocks, answering the code
BoardLink sends exactly as a board would. A rename that the flash refuses must leave the old
file (config.json) in place: the old fallback removed it first and then lost it when the second
rename failed too."""

from __future__ import annotations

import re
import subprocess

import pytest

from host_tools.board_link import BoardExecError, BoardLink
from tests.mpy_plugin import FW_TESTS, micropython_bin

OLD = b'{"device": {"name": "old"}}' + b" " * 900
NEW = b'{"device": {"name": "new"}}' + b" " * 1100

# The board: littlefs with 4 KB blocks (the ESP32's flash sector) full but for room for the
# new file. littlefs refuses a rename with ENOSPC when the metadata commit it needs cannot be
# placed (lfs_dir_commit: compaction or a split needs a free block); renames were not refused
# by the model's littlefs in any fill tried, so the mount in between refuses them once the
# flash is full: both of the old fallback's renames, as a flash that stays full does.
BOARD = r"""
import io, os, sys
sys.path.append(%(tests)r)
from ramblockdev import RAMBlockDev


class Full:
    # a mount that passes everything to littlefs but refuses renames while `full` is set
    def __init__(self, vfs):
        self.v = vfs
        self.full = False

    def mount(self, ro, mkfs):
        return self.v.mount(ro, mkfs)

    def umount(self):
        return self.v.umount()

    def rename(self, a, b):
        if self.full:
            raise OSError(28)  # ENOSPC
        return self.v.rename(a, b)

    def __getattr__(self, name):
        return getattr(self.v, name)


dev = RAMBlockDev(4096, 12)
dev.format()
fs = Full(os.VfsLfs2(dev))
os.mount(fs, "/flash")
os.chdir("/flash")
with open("config.json", "wb") as f:
    f.write(%(old)r)
with open("fill", "wb") as f:  # the outbox, say: the flash full to its last blocks
    try:
        while True:
            f.write(b"x" * 256)
    except OSError:
        pass
os.remove("fill")
free = os.statvfs("")[3] - 2  # two blocks left for the new file's temp copy
with open("fill", "wb") as f:
    f.write(b"x" * (free * 4096 - 4096))
fs.full = True
g = {"__name__": "__main__"}
inp = sys.stdin.buffer
while True:
    n = int(inp.readline())
    if n < 0:
        break
    code = inp.read(n)
    try:
        exec(code, g)
        print("OK")
    except Exception as e:
        print("ERR %%s: %%s" %% (type(e).__name__, e))
with open("config.json", "rb") as f:
    print("CONFIG", f.read() == %(old)r)
print("FILES", sorted(os.listdir()))
"""


class LfsTransport:
    """BoardLink's transport (mpremote's exec) over a pipe to the board above."""

    def __init__(self):
        code = BOARD % {"tests": str(FW_TESTS), "old": OLD}
        self.p = subprocess.Popen([micropython_bin(), "-c", code], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def exec(self, code):
        from mpremote.transport import TransportExecError

        code = code.encode() if isinstance(code, str) else code
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write(b"%d\n" % len(code) + code)
        self.p.stdin.flush()
        line = self.p.stdout.readline().decode().strip()
        if line.startswith("ERR "):
            raise TransportExecError(1, line[4:])
        assert line == "OK", line
        return b""

    def end(self) -> str:
        out, _ = self.p.communicate(b"-1\n", timeout=30)
        return out.decode()


def link(transport: LfsTransport, deflate: bool) -> BoardLink:
    from mpremote.transport import TransportError

    b = BoardLink.__new__(BoardLink)  # the link without a serial port: the board is the pipe
    b.port, b.t, b._TransportError = "lfs", transport, TransportError
    b._helpers = False
    transport.exec("import os, hashlib, io\nfrom binascii import a2b_base64 as _d\n"
                   "from deflate import DeflateIO as _Z, RAW as _R")
    b.has_b64, b.has_deflate = True, deflate
    return b


@pytest.mark.parametrize("deflate", [True, False], ids=["deflate", "base64"])
def test_a_refused_rename_on_a_full_flash_keeps_the_old_config(deflate):
    t = LfsTransport()
    try:
        with pytest.raises(BoardExecError) as err:
            link(t, deflate).write_atomic("config.json", NEW)
    finally:
        out = t.end()
    assert "CONFIG True" in out, out  # the old config, whole: the board still boots as before
    assert "config.json.tmp" not in out.split("FILES")[1], out  # and no temp copy left behind
    assert re.search(r"config.json not replaced \(the old one is kept\): rename failed: .*28", str(err.value))
