# Frames over 64 KiB (the 8-byte length form), in their own file: the plugin runs one heap
# size per file for the [py] variant.
import gc

from mptest import heapsize, randbytes
from test_ws import unmask
from uplink import ws


@heapsize("1M")
def test_64k_frames_use_the_long_length_and_mask_correctly():
    for n in (65535, 65536, 70001):
        gc.collect()
        p = randbytes(n)
        fr = ws.frame(p)
        assert fr[1] & 0x7F == (126 if n < 65536 else 127)
        op, body = unmask(fr)
        assert op == 2 and body == p, n
