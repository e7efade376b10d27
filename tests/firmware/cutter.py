# A proxy in front of the session's mosquitto, in the test's own process, that cuts the
# device's connection where a test says: some ms after CONNACK, at the Nth PUBLISH, at a
# PUBLISH over a size or carrying some bytes. It reads whole MQTT packets both ways, so a
# cut always falls between packets, as a broker's does.
import asyncio
import os


def largest_free():
    """The largest block the GC heap can hand out now, in bytes (to 64 B): a fragmented heap
    can have plenty free and no room for a TLS record."""
    lo, hi = 0, 1 << 20
    while hi - lo > 64:
        mid = (lo + hi) // 2
        try:
            bytearray(mid)  # (garbage at once: only whether it fits matters)
            lo = mid
        except MemoryError:
            hi = mid
    return lo


async def _packet(r):
    # one whole packet: (first byte, the packet's bytes)
    head = await r.readexactly(1)
    n = shift = 0
    raw = bytearray(head)
    while True:
        b = (await r.readexactly(1))[0]
        raw.append(b)
        n |= (b & 127) << shift
        shift += 7
        if not b & 128:
            break
    if n:
        raw += await r.readexactly(n)
    return head[0], bytes(raw), len(raw) - n


class Cutter:
    after_connack_ms = None  # cut this long after the CONNACK
    after_publishes = None  # cut at the Nth PUBLISH of a connection (not forwarded)
    max_payload = None  # cut at a PUBLISH whose payload is longer
    poison = None  # cut at a PUBLISH whose payload holds these bytes
    drop_pubacks = False  # the broker's PUBACKs never reach the device

    def __init__(self, host, port):
        self.host = host
        self.port = port
        self.connections = 0  # CONNACKs passed to the device
        self.url = None
        self._srv = None

    async def start(self):
        for _ in range(20):  # (the unix port has no getsockname: try random free ports)
            port = 20000 + int.from_bytes(os.urandom(2), "big") % 40000
            try:
                self._srv = await asyncio.start_server(self._accept, "127.0.0.1", port)
                break
            except OSError:
                pass
        self.url = "mqtt://127.0.0.1:%d" % port
        return self

    def close(self):
        if self._srv is not None:
            self._srv.close()

    async def _accept(self, dr, dw):
        try:
            br, bw = await asyncio.open_connection(self.host, int(self.port))
        except OSError:
            dw.close()
            return
        done = asyncio.Event()
        tasks = [asyncio.create_task(self._pump(self._up, dr, bw, done)),
                 asyncio.create_task(self._pump(self._down, br, dw, done))]
        await done.wait()  # either way ended (a cut, or a side closed): both go
        for t in tasks:
            t.cancel()
        for w in (dw, bw):
            try:
                w.close()
                await w.wait_closed()
            except Exception:
                pass

    async def _pump(self, way, r, w, done):
        try:
            await way(r, w)
        except Exception:
            pass
        done.set()

    async def _up(self, r, w):
        # device -> broker: the rules that look at what the device sends
        n = 0
        while True:
            first, raw, hl = await _packet(r)
            if first >> 4 == 3:
                n += 1
                tl = raw[hl] << 8 | raw[hl + 1]
                payload = raw[hl + 2 + tl + (2 if (first >> 1) & 3 else 0) :]
                if ((self.after_publishes is not None and n >= self.after_publishes)
                        or (self.max_payload is not None and len(payload) > self.max_payload)
                        or (self.poison is not None and self.poison in payload)):
                    return
            w.write(raw)
            await w.drain()

    async def _down(self, r, w):
        # broker -> device
        while True:
            first, raw, _ = await _packet(r)
            if first == 0x40 and self.drop_pubacks:
                continue
            w.write(raw)
            await w.drain()
            if first == 0x20:
                self.connections += 1
                if self.after_connack_ms is not None:
                    await asyncio.sleep_ms(self.after_connack_ms)
                    return
