# A ROMFS image (MicroPython's extmod/vfs_rom.c format) of a directory on the filesystem,
# streamed a piece at a time: the board builds one to move a committed update into its ROMFS
# partition (uplink.ota_romfs) without holding the image, or a file of it, in RAM.
# The bytes are those of host_tools/romfs_deploy.image (mpremote's VfsRomWriter) for the same
# files: records kind, length, payload (unsigned LEB128, most significant group first), a
# directory's entries in name order, and the whole image an even number of bytes.
import os

HEADER = b"\xd2\xcd\x31"
_VERBATIM = 2
_DIR = 4
_FILE = 5


def uint(n):
    b = [n & 0x7F]
    n >>= 7
    while n:
        b.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(b))


def _rec(kind, n):
    return uint(kind) + uint(n)  # a record's head; its n bytes of payload follow


def _name(name):
    return uint(len(name)) + name.encode()


def tree(path):
    """[(name, size), (name, subtree), ...] of the files under path, in name order; empty
    directories are left out, as an image made of files alone has none."""
    out = []
    for e in sorted(os.ilistdir(path)):
        name = e[0]
        if e[1] == 0x4000:
            sub = tree(path + "/" + name)
            if sub:
                out.append((name, sub))
        else:
            out.append((name, os.stat(path + "/" + name)[6]))
    return out


def _payload(name, item):
    if isinstance(item, int):  # a file: its name, then one verbatim data record
        return len(_name(name)) + len(_rec(_VERBATIM, item)) + item
    return len(_name(name)) + sum(_size(n, i) for n, i in item)


def _size(name, item):
    p = _payload(name, item)
    return len(_rec(_FILE if isinstance(item, int) else _DIR, p)) + p


def _head(n):
    """The image's first bytes, for n bytes of records after them: the header and the length."""
    ln = uint(n)
    if (len(HEADER) + len(ln) + n) % 2:
        ln = b"\x80" + ln  # a redundant leading group: the image's length even
    return HEADER + ln


def _body(top):
    return sum(_size(name, item) for name, item in top)


def size(top):
    n = _body(top)
    return len(_head(n)) + n


def write(base, top, out, buf):
    """Stream the image of `top` = [(name, tree), ...] (entries of directory `base`) to
    out(bytes), files read through `buf`."""
    out(_head(_body(top)))
    for name, item in top:
        _write(base + "/" + name, name, item, out, buf)


def _write(path, name, item, out, buf):
    if isinstance(item, int):
        out(_rec(_FILE, _payload(name, item)) + _name(name) + _rec(_VERBATIM, item))
        with open(path, "rb") as f:
            while True:
                n = f.readinto(buf)
                if not n:
                    return
                out(memoryview(buf)[:n])
    out(_rec(_DIR, _payload(name, item)) + _name(name))
    for n, i in item:
        _write(path + "/" + n, n, i, out, buf)
