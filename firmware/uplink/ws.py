# RFC 6455 WebSocket client, just enough for MQTT: the handshake (subprotocol "mqtt", the
# server's Sec-WebSocket-Accept checked), masked binary frames out, and a byte-stream view of
# the frames coming in (one frame may hold part of a packet or several). Ping is answered,
# close is echoed, fragments are joined; anything else the RFC forbids closes the connection.
import binascii
import hashlib
import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # names for the type checker only
    from typing import Any

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CHUNK = 256  # mask this many bytes per big-integer XOR: its temporaries are the largest blocks a frame needs
# Payload gathered into one frame: room for a whole 1 KB publisher message with its MQTT
# header and topic, so a full message is not framed into a buffer of its own.
GATHER = 1152
HEAD = 8  # room before the gathered payload for the longest header it needs (4) + mask key (4)
MAX_HEADERS = 32
MAX_LINE = 512
# lines in the handshake response before we call it hostile
WANTED = (b"upgrade", b"connection", b"sec-websocket-accept", b"sec-websocket-protocol")


class WSError(OSError):
    pass


def accept_key(key):
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (both base64 bytes)."""
    return binascii.b2a_base64(hashlib.sha1(key + GUID).digest())[:-1]


def mask(buf, key):
    """buf XOR the 4-byte key repeated: done as one big-integer XOR in C, not a byte loop."""
    n = len(buf)
    if not n:
        return b""
    q, r = divmod(n, 4)
    k = int.from_bytes(key * (q + 1), "big") >> (8 * (4 - r))
    return (int.from_bytes(buf, "big") ^ k).to_bytes(n, "big")


def _mask_into(mv, i, end, key, st=None):
    # mask mv[i:end] in place, in chunks (a multiple of 4 from the payload's start, so the key
    # lines up) to bound the big-integer temporaries; the repeated key is made once, not per
    # chunk. st: a WSStream whose _done follows the progress, so that after a MemoryError in
    # the integer work the next call goes on from there (masking a byte twice corrupts it).
    k = None
    while i < end:
        if end - i < CHUNK:
            mv[i:end] = mask(mv[i:end], key)
            i = end
        else:
            if k is None:
                k = int.from_bytes(key * (CHUNK // 4), "big")
            j = i + CHUNK
            mv[i:j] = (int.from_bytes(mv[i:j], "big") ^ k).to_bytes(CHUNK, "big")
            i = j
        if st is not None:
            st._done = i


def frame(payload, opcode=2):
    """One final, masked client frame in a buffer of its own: control frames, and payloads
    too big for the gather buffer."""
    n = len(payload)
    if n < 126:
        hdr = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        hdr = bytes((0x80 | opcode, 0xFE, n >> 8, n & 255))
    else:
        hdr = bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big")
    h = len(hdr) + 4
    out = bytearray(h + n)
    out[: h - 4] = hdr
    key = os.urandom(4)
    out[h - 4 : h] = key
    mv = memoryview(out)
    mv[h:] = payload
    _mask_into(mv, h, h + n, key)
    return out


async def _line(raw):
    # one header line, byte by byte: the bytes are buffered already, and a hostile server
    # cannot make us hold more than MAX_LINE of them
    line = bytearray()
    while len(line) < MAX_LINE:
        c = await raw.readexactly(1)
        if c == b"\n":
            return bytes(line).strip()
        line += c
    raise WSError("WebSocket upgrade: header line too long")


async def handshake(raw, host, port, path):
    """Upgrade a connected Stream to a WSStream, or raise WSError saying what the server did."""
    key = binascii.b2a_base64(os.urandom(16))[:-1]
    req = (
        "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: mqtt\r\n\r\n" % (path, host, port, key.decode())
    )
    raw.write(req.encode())
    await raw.drain()
    status = await _line(raw)
    parts = status.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or parts[1] != b"101":
        raise WSError("WebSocket upgrade refused: %r" % status[:80])
    seen = {}
    for _ in range(MAX_HEADERS):
        line = await _line(raw)
        if not line:
            break
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name in WANTED:  # keep only what we check: a hostile server cannot make us hoard
            seen[name] = value.strip()
    else:
        raise WSError("WebSocket upgrade: too many header lines")
    if seen.get(b"upgrade", b"").lower() != b"websocket":
        raise WSError("WebSocket upgrade: no 'Upgrade: websocket' in the answer")
    if b"upgrade" not in seen.get(b"connection", b"").lower():
        raise WSError("WebSocket upgrade: no 'Connection: Upgrade' in the answer")
    if seen.get(b"sec-websocket-accept") != accept_key(key):
        raise WSError("WebSocket upgrade: wrong Sec-WebSocket-Accept")
    if seen.get(b"sec-websocket-protocol", b"").lower() != b"mqtt":
        raise WSError("WebSocket upgrade: server did not accept subprotocol mqtt")
    return WSStream(raw)


class WSStream:
    """The payload bytes of incoming data frames as one stream. Writes are gathered straight
    into the frame's buffer (the stream below passes bytes through) and leave as one frame per
    batch (at push/drain): the header goes in front and the mask is applied in place, so a
    batch costs no copy and no allocation beyond the mask's temporaries."""

    def __init__(self, raw):
        self._raw = raw
        self._gm: Any = None  # the frame buffer, HEAD + GATHER bytes: made at the first write
        self._gn = 0  # gathered payload is _gm[HEAD:HEAD + _gn]
        self._done = -1  # the buffer is masked up to here (-1: the frame is still open)
        self._stuck = False
        self._left = 0  # payload bytes still to read in the current data frame
        self._more = False  # a fragmented message is in progress (continuations expected)
        self._closed = False

    def take(self, n):
        if self._left >= n:
            b = self._raw.take(n)
            if b is not None:
                self._left -= n
            return b
        return None

    def unread(self, n):
        self._left += n
        self._raw.unread(n)

    async def fill(self):
        if self._left:
            await self._raw.fill()
        else:
            await self._next_frame()

    async def readexactly(self, n):
        if self._left >= n:  # the common case: the whole read lies inside this frame
            self._left -= n
            return await self._raw.readexactly(n)
        parts = []
        while n:
            while not self._left:
                await self._next_frame()
            k = n if n < self._left else self._left
            parts.append(await self._raw.readexactly(k))
            self._left -= k
            n -= k
        return b"".join(parts)

    async def _next_frame(self):
        raw = self._raw
        h = await raw.readexactly(2)
        b0, b1 = h[0], h[1]
        op = b0 & 0x0F
        if b0 & 0x70:
            raise WSError("WebSocket: reserved bits set")
        if b1 & 0x80:
            raise WSError("WebSocket: server frames must not be masked")
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(await raw.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await raw.readexactly(8), "big")
            if n >> 63:
                raise WSError("WebSocket: bad frame length")
        if op >= 8:
            await self._control(op, n, b0 & 0x80)
        elif op == 2 or op == 0:
            if (op == 0) != self._more:
                raise WSError("WebSocket: unexpected continuation" if op == 0 else "WebSocket: unfinished message")
            self._more = not (b0 & 0x80)
            self._left = n
        else:  # MQTT over WebSocket is binary only; text and unknown opcodes end it
            raise WSError("WebSocket: unexpected opcode %d" % op)

    async def _control(self, op, n, fin):
        if n > 125 or not fin:
            raise WSError("WebSocket: bad control frame")
        data = await self._raw.readexactly(n) if n else b""
        if op == 9:  # ping: answer at once, the writer's packets are whole so no interleaving
            self._raw.write(frame(data, 10))
            self._raw.push()
        elif op == 8:
            code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
            self._send_close(data[:2])
            raise EOFError("WebSocket closed by server (code %d)" % code)
        elif op != 10:  # pong needs nothing; 0xB-0xF are reserved
            raise WSError("WebSocket: unexpected opcode %d" % op)

    def _send_close(self, body=b"\x03\xe8"):
        if not self._closed:
            self._closed = True
            try:
                self._raw.write(frame(body, 8))
                self._raw.push()
            except Exception:
                pass

    def write(self, buf):
        """Gather buf; True when the socket below refuses bytes (the caller should drain)."""
        n = len(buf)
        if self._gm is None:  # (a connection writes at once: CONNECT; a reader never pays)
            self._gm = memoryview(bytearray(HEAD + GATHER))
        g = self._gn
        if g + n > GATHER or self._done >= 0:  # full, or sealed by a send that failed
            self._frame()
            g = 0
            if n > GATHER:  # too big to gather: a frame of its own
                self._stuck = self._raw.write(frame(buf))
                return self._stuck
        g += HEAD
        self._gm[g : g + n] = buf  # copied now: the caller may change buf (the DUP bit)
        self._gn += n
        return self._stuck

    def _frame(self):
        n = self._gn
        if not n:
            return
        gm = self._gm
        at = HEAD - 6 if n < 126 else HEAD - 8
        if self._done < 0:  # seal it: header and a fresh key in front of the payload
            if n < 126:
                gm[at + 1] = 0x80 | n
            else:  # (GATHER < 65536)
                gm[at + 1] = 0xFE
                gm[at + 2] = n >> 8
                gm[at + 3] = n & 255
            gm[at] = 0x82  # final, binary
            gm[HEAD - 4 : HEAD] = os.urandom(4)
            self._done = HEAD
        # masked in place with its progress kept: a MemoryError leaves the frame whole and half
        # masked, and the next push/drain/write goes on with the same key (dropping the frame
        # would lose packets the client counts as sent)
        end = HEAD + n
        _mask_into(gm, self._done, end, bytes(gm[HEAD - 4 : HEAD]), self)
        # the stream below copies what the socket does not take at once, so the buffer is
        # free for the next batch as soon as this returns
        self._stuck = self._raw.write(gm[at:end])
        self._gn = 0
        self._done = -1

    async def drain(self):
        self._frame()
        await self._raw.drain()
        self._stuck = False

    def push(self):
        self._frame()
        return self._raw.push()

    def close(self):
        self._send_close()
        self._raw.close()
