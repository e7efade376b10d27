"""Malformed requests to a real `uplink relay` process over real TLS: each is answered 400 and
counted into the relay's rate-limited summary line, with no traceback per request and nothing
of the request's bytes in the log (aiohttp's own log quoted them, an Authorization header
among them: issue 22)."""

from __future__ import annotations

import asyncio
import re

from tests.relay_flood import RelayProcess, good_request

SECRET = "Bearer sk-live-NEVER-IN-A-LOG"
HEAD = f"GET /v1/credentials HTTP/1.1\r\nHost: localhost\r\nAuthorization: {SECRET}\r\n".encode()
MALFORMED = {
    "bad header byte": HEAD + b"X-A: \x01\r\n\r\n",
    "bad byte in the secret": HEAD.replace(b"NEVER", b"NE\x01VER") + b"\r\n",
    "8 KB header line": HEAD + b"X-Long: " + b"a" * 8192 + b"\r\n\r\n",
    "2,000 headers": HEAD + b"".join(b"X-H%d: v\r\n" % i for i in range(2000)) + b"\r\n",
    "bad chunked body": HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
}
ROUNDS = 4


async def send_raw(port: int, ctx, data: bytes) -> bytes:
    """One request on its own TLS connection; the status line of the answer."""
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
    try:
        w.write(data)
        await w.drain()
        return await asyncio.wait_for(r.readline(), 10)
    finally:
        w.close()


def test_malformed_requests_are_one_summary_line_without_traceback(provider, tmp_path):
    relay = RelayProcess(provider, tmp_path).start()
    try:
        async def go():
            ctx = relay.ssl_context()
            answers = []
            for i in range(ROUNDS):
                for data in MALFORMED.values():
                    answers.append(await send_raw(relay.port, ctx, data))
                if i == 0:
                    await asyncio.sleep(1.5)  # the first summary line goes out; the rest wait
            status, _, _ = await good_request(relay, ctx)
            return answers, status

        answers, status = asyncio.run(go())
    finally:
        log = relay.stop()
    assert all(a.startswith(b"HTTP/1.") and b" 400 " in a for a in answers), answers
    assert status == 200  # the relay still serves devices
    assert "Traceback" not in log and "Error handling request" not in log, log
    assert "NEVER" not in log and "NE\\x01VER" not in log  # nothing of the Authorization header
    summaries = [line for line in log.splitlines() if "malformed request" in line]
    # the first line at once, then at most one per minute: the rest are in the line at stop
    assert 1 <= len(summaries) <= 2, log
    counted = sum(int(m) for line in summaries for m in re.findall(r"(\d+) malformed request", line))
    assert counted == ROUNDS * len(MALFORMED), log
    assert "BadHttpMessage" in log and "LineTooLong" in log  # the kind, never the bytes
    assert len(log.splitlines()) <= 12, log
