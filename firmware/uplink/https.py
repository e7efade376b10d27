# A small HTTP/1.1 client for the token relay and Biotz HTTP ingestion: one request per
# connection (Connection: close), the whole request in one write, TLS through
# uplink.transport (the server is checked against a DER CA, SNI = host). Bodies are capped so
# a misbehaving server cannot exhaust the heap. Never logs: headers carry secrets.
import asyncio

from uplink import transport


class HTTPError(OSError):
    pass


def parse_url(url):
    """'https://host[:port]/path' -> (tls, host, port, path)."""
    if url.startswith("https://"):
        tls, rest, port = True, url[8:], 443
    elif url.startswith("http://"):
        tls, rest, port = False, url[7:], 80
    else:
        raise ValueError("URL must start with https:// or http://: " + url)
    j = rest.find("/")
    hostport, path = (rest, "/") if j < 0 else (rest[:j], rest[j:])
    k = hostport.rfind(":")
    host = hostport
    if k >= 0 and "]" not in hostport[k:]:
        if not hostport[k + 1 :].isdigit():
            raise ValueError("bad port in URL: " + url)
        host, port = hostport[:k], int(hostport[k + 1 :])
    host = host.strip("[]")
    if not host or "@" in host or not 0 < port < 65536:
        raise ValueError("bad host or port in URL: " + url)
    return tls, host, port, path


async def request(method, url, headers=None, body=None, ca=None, timeout_ms=10000, max_body=4096):
    """-> (status, body bytes). Raises OSError (HTTPError) on transport or protocol trouble."""
    tls, host, port, path = parse_url(url)
    ctx = transport.tls_context(ca) if tls else None
    s = await transport.open_tcp(host, port, ssl_ctx=ctx, server_hostname=host,
                                 timeout_ms=timeout_ms)
    try:
        return await asyncio.wait_for_ms(
            _exchange(s, method, host, port, path, headers, body, max_body), timeout_ms)
    except asyncio.TimeoutError:
        raise HTTPError("no answer from %s:%d within %d ms" % (host, port, timeout_ms))
    finally:
        s.close()


async def _exchange(s, method, host, port, path, headers, body, max_body):
    h = "%s %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\nUser-Agent: uplink\r\n" % (
        method, path, host, port)
    if headers:
        for k in headers:
            h += "%s: %s\r\n" % (k, headers[k])
    if body is not None:
        h += "Content-Length: %d\r\n" % len(body)
    h += "\r\n"
    s.write(h.encode() + body if body is not None else h.encode())
    h = None
    await s.drain()
    line = await read_line(s)
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise HTTPError("not an HTTP answer from %s:%d" % (host, port))
    status = int(parts[1])
    length = None
    chunked = False
    while True:
        line = await read_line(s)
        if line in (b"\r\n", b"\n"):
            break
        i = line.find(b":")
        if i < 0:
            continue
        name = line[:i].strip().lower()
        if name == b"content-length":
            length = int(line[i + 1 :].strip())
        elif name == b"transfer-encoding" and b"chunked" in line[i + 1 :].lower():
            chunked = True
    if chunked:
        return status, await _chunks(s, max_body)
    if length is None:
        return status, b""  # no length and no chunks: nothing we need (we close anyway)
    if length > max_body:
        raise HTTPError("answer of %d bytes exceeds the %d-byte limit" % (length, max_body))
    return status, (await s.readexactly(length) if length else b"")


async def read_line(s, cap=200):
    """One line through readexactly(1) alone (the documented Stream interface; buffered bytes
    cost no syscall). Bytes past `cap` are dropped: long header lines (cookies, security
    policies) carry nothing this client needs, and must not cost heap."""
    buf = bytearray()
    while True:
        c = await s.readexactly(1)
        if c == b"\n":
            buf += c
            return bytes(buf)
        if len(buf) < cap:
            buf += c


async def _chunks(s, max_body):
    out = b""
    while True:
        size = int((await read_line(s)).split(b";")[0].strip(), 16)
        if size == 0:
            return out
        if len(out) + size > max_body:
            raise HTTPError("chunked answer exceeds the %d-byte limit" % max_body)
        out += await s.readexactly(size)
        await s.readexactly(2)  # CRLF after each chunk
