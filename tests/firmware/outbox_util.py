# Helpers shared by the outbox tests: scratch directories and record contents.
import os
from binascii import hexlify


def tmpdir(tag="ob"):
    d = "/tmp/uplink-%s-%s" % (tag, hexlify(os.urandom(6)).decode())
    os.mkdir(d)
    return d


def rmtree(d):
    for e in os.ilistdir(d):
        p = d + "/" + e[0]
        if e[1] == 0x4000:
            rmtree(p)
        else:
            os.remove(p)
    os.rmdir(d)


def rec(i, size=100):
    # deterministic content that names its sequence number
    s = b"reading %06d " % i
    return s + b"x" * (size - len(s))


def drain(ob, batch=10):
    # read everything from the head without acking: [(id, data)]
    out = []
    after = 0
    while True:
        got = ob.read(after, batch)
        if not got:
            return out
        out.extend(got)
        after = got[-1][0]
