# ThingsBoard's package checksums other than SHA256 (its ChecksumAlgorithm: MD5, SHA256,
# SHA384, SHA512, CRC32, MURMUR3_32, MURMUR3_128), those the chip can compute: MD5 from hashlib
# (the ESP32 port has md5, sha1 and sha256 only: extmod/modhashlib.c, MICROPY_PY_HASHLIB_MD5 =
# MICROPY_PY_SSL), CRC32 from binascii, MURMUR3_32 in a few lines here. ThingsBoard writes CRC32
# and MURMUR3_32 as Guava's HashCode does, the 4 bytes little-endian, in hex (its Python
# firmware-update example reverses the bytes the same way). Loaded by uplink.ota only for a
# package that uses one.
SUPPORTED = ("SHA256", "MD5", "CRC32", "MURMUR3_32")


def _le(n):
    return "".join("%02x" % (n >> s & 0xFF) for s in (0, 8, 16, 24))


class _Crc32:
    def __init__(self):
        self.c = 0

    def update(self, b):
        import binascii

        self.c = binascii.crc32(b, self.c)

    def hexdigest(self):
        return _le(self.c & 0xFFFFFFFF)


class _Md5:
    def __init__(self):
        import hashlib

        self.h = hashlib.md5()
        self.d = None

    def update(self, b):
        self.h.update(b)

    def hexdigest(self):
        if self.d is None:  # (digest() ends a MicroPython hash)
            self.d = "".join("%02x" % x for x in self.h.digest())
        return self.d


M = 0xFFFFFFFF


def _rotl(x, r):
    return ((x << r) | (x >> (32 - r))) & M


class _Murmur3:
    """MurmurHash3 x86_32, seed 0, fed in pieces (a tail of < 4 bytes waits for the next)."""

    def __init__(self):
        self.h = 0
        self.n = 0
        self.tail = b""

    def update(self, b):
        b = self.tail + bytes(b)
        h = self.h
        end = len(b) & ~3
        for i in range(0, end, 4):
            k = (b[i] | b[i + 1] << 8 | b[i + 2] << 16 | b[i + 3] << 24) * 0xCC9E2D51 & M
            k = _rotl(k, 15) * 0x1B873593 & M
            h = (_rotl(h ^ k, 13) * 5 + 0xE6546B64) & M
        self.h = h
        self.n += end
        self.tail = b[end:]

    def hexdigest(self):
        h, t = self.h, self.tail
        k = 0
        for i in range(len(t) - 1, -1, -1):
            k = k << 8 | t[i]
        if t:
            k = k * 0xCC9E2D51 & M
            h ^= _rotl(k, 15) * 0x1B873593 & M
        h ^= self.n + len(t)
        h = (h ^ h >> 16) * 0x85EBCA6B & M
        h = (h ^ h >> 13) * 0xC2B2AE35 & M
        return _le(h ^ h >> 16)


def unsupported(alg):
    return "checksum algorithm %s is not supported by this board: choose SHA256 (or %s) for the package" % (
        alg, ", ".join(SUPPORTED[1:]))


def new(alg):
    return {"MD5": _Md5, "CRC32": _Crc32, "MURMUR3_32": _Murmur3}[alg]()
