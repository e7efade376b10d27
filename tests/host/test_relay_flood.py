"""The token relay under a connection flood: a real `uplink relay` process at a 1,024-file limit,
real sockets on loopback. The attacker is on 127.0.0.1; the good device connects from
127.0.0.2 (another loopback address, no setup needed on Linux), as a second LAN host would.

How fast the device is served during a flood is a number `make bench BENCH_ARGS=relay` prints;
the timeouts here only keep a broken relay from hanging the test.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.relay_flood import Flood, RelayProcess, ensure_fds, good_request, nofile_soft, rss_kb

SLOW_TLS = 1020
BARE_TCP = 1100
ATTACKER = ["127.0.0.1"]

pytestmark = pytest.mark.skipif(not ensure_fds(4096), reason="needs 4,096 open files")


def _log_ok(text: str, max_lines: int, max_bytes: int) -> None:
    lines = text.splitlines()
    assert len(lines) <= max_lines and len(text) <= max_bytes, (
        f"relay log: {len(lines)} lines, {len(text)} bytes:\n" + "\n".join(lines[:20]))
    assert "Traceback" not in text


def test_device_served_while_a_flood_holds_slow_tls_and_bare_tcp(provider, tmp_path):
    relay = RelayProcess(provider, tmp_path, nofile=(1024, 1024)).start()
    log = ""
    try:
        ctx = relay.ssl_context()

        async def go():
            flood = Flood(relay.port, ctx)
            try:
                await flood.open(SLOW_TLS, tls=True, addresses=ATTACKER)
                await flood.open(BARE_TCP, tls=False, addresses=ATTACKER)
                held = await flood.settle(64)
                got = [await good_request(relay, ctx) for _ in range(3)]
                still = flood.held()
                return held, still, got, flood.failed
            finally:
                await flood.close()

        held, still, got, failed = asyncio.run(go())
        assert [status for status, _, _ in got] == [200] * 3
        assert all(body["username"] == "app-5f1e2d" for _, _, body in got)
        # the flood really was there: the relay kept what its per-address cap allows and shut
        # the rest at once, rather than letting them queue for a file descriptor
        assert 0 < held <= 64 and still > 0
        assert failed >= SLOW_TLS - 64  # TLS connections over the cap are shut at once
        assert relay.proc is not None and relay.proc.poll() is None  # still serving
    finally:
        log = relay.stop()
    # startup, three audit lines, one summary line at once and one at stop
    _log_ok(log, max_lines=12, max_bytes=4000)
    assert "refused at the per-address cap" in log


def test_total_cap_evicts_slow_connections_and_memory_returns(provider, tmp_path):
    """Slow connections from many addresses fill the total cap: the oldest idle one makes
    room, so a device still gets in; the relay's memory after the flood is back near where
    it started (the old relay kept ~290 KB per connection it had ever held)."""
    attackers = [f"127.0.1.{i}" for i in range(1, 41)]  # 40 x 64 > the cap of 800
    relay = RelayProcess(provider, tmp_path, nofile=(1024, 1024)).start()
    try:
        ctx = relay.ssl_context()

        async def go():
            assert (await good_request(relay, ctx))[0] == 200  # warm: token fetched, code loaded
            before = rss_kb(relay.proc.pid)
            flood = Flood(relay.port, ctx)
            try:
                await flood.open(SLOW_TLS, tls=True, addresses=attackers)
                await flood.open(BARE_TCP, tls=False, addresses=attackers)
                during = rss_kb(relay.proc.pid)
                got = [await good_request(relay, ctx) for _ in range(3)]
                held = await flood.settle(1024 - 128)
            finally:
                await flood.close()
            for _ in range(100):  # the relay notices the closes and trims its heap
                await asyncio.sleep(0.1)
                if rss_kb(relay.proc.pid) < before + 16 * 1024:
                    break
            after = rss_kb(relay.proc.pid)
            return before, during, after, got, held

        before, during, after, got, held = asyncio.run(go())
        assert [status for status, _, _ in got] == [200] * 3
        assert 0 < held <= 1024 - 128
        assert after < before + 16 * 1024, (before, during, after)
    finally:
        log = relay.stop()
    _log_ok(log, max_lines=14, max_bytes=5000)
    assert "closed at the total cap" in log


def test_slow_connections_are_closed_after_the_header_timeout(provider, tmp_path):
    relay = RelayProcess(provider, tmp_path, args=("--header-timeout", "1")).start()
    try:
        ctx = relay.ssl_context()

        async def go():
            flood = Flood(relay.port, ctx)
            try:
                await flood.open(20, tls=True, addresses=ATTACKER)
                await flood.open(20, tls=False, addresses=ATTACKER)
                opened = len(flood.readers)
                closed = await flood.wait_closed_by_relay(timeout=30)
                return opened, closed
            finally:
                await flood.close()

        opened, closed = asyncio.run(go())
        assert opened == 40 and closed == 40
    finally:
        log = relay.stop()
    assert "closed for not sending request headers within 1 s" in log
    _log_ok(log, max_lines=6, max_bytes=2000)


def test_open_file_limit_raised_to_the_hard_limit(provider, tmp_path):
    relay = RelayProcess(provider, tmp_path, nofile=(1024, 4096)).start()
    try:
        assert nofile_soft(relay.proc.pid) == 4096
    finally:
        log = relay.stop()
    assert "up to 1000 connections, 64 per address (open-file limit 4096)" in log
