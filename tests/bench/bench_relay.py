"""Token relay latency: 1,000 signed requests from 50 concurrent clients, p50/p99, and how
many provider token calls those 1,000 requests caused.

The relay (host_tools.relay, HTTPS) and the test OIDC provider run in a child process, so the
clients' CPU use does not sit in the relay's event loop. Each client makes one unmeasured
warm-up request first (connection set up, the one token fetched), then the 1,000 measured
requests are shared out among them. Provider calls count from before the warm-up. Two client
shapes:
- keep-alive: each client reuses its TLS connection (the relay's own cost);
- new connection: a TLS handshake per request, which is what a board does.
Beside each, the same clients against a bare aiohttp handler (TCPSite over TLS with the same
certificate, a fixed JSON answer of the same size, no checks, no log): the floor this machine
sets in this run. The relay writes its audit line per request to a file, as in production.
Then the flood: how fast a device gets its token while `uplink relay` at a 1,024-file limit
holds 1,020 slow TLS and 1,100 bare TCP connections (tests/relay_flood.py).

    python -m tests.bench relay            (or: make bench BENCH_ARGS=relay)
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import ssl
import statistics
import time

import aiohttp

from host_tools.relay import PATH, sign_headers

N_REQUESTS = 1000
CLIENTS = 50


def _serve(conn, kind: str, audit_log: str, freeze: bool = True) -> None:
    import logging

    from tests.oidc_provider import OIDCService

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the provider's request lines
    # all 50 clients are on 127.0.0.1; closing connections still count for a moment
    svc = OIDCService(lifetime=300, min_life_s=60, max_per_address=4 * CLIENTS).start()
    if kind == "relay":
        # the audit line per request stays on, to a file, as `uplink relay` writes it
        h = logging.FileHandler(audit_log)
        h.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
        logging.getLogger("uplink.relay").addHandler(h)
        logging.getLogger("uplink.relay").setLevel(logging.INFO)
        if freeze:
            from host_tools.relay_conns import freeze_heap

            freeze_heap()  # as Relay.serve_forever (`uplink relay`) does after start
        conn.send(svc.env())
    else:
        conn.send(dict(svc.env(), RELAY_URL=_bare_server(svc)))
    cpu0 = time.process_time()
    while True:
        cmd = conn.recv()
        if cmd == "mark":  # warm-up done (connections, the token fetch): count from here
            cpu0 = time.process_time()
        elif cmd == "stats":
            conn.send({"token_requests": svc.provider.token_requests,
                       "cpu_s": time.process_time() - cpu0})
        else:
            svc.stop()
            conn.send(True)
            return


def _bare_server(svc) -> str:
    """The floor: aiohttp's own TCPSite over TLS with the relay's certificate, one handler
    answering a fixed JSON body of the same size, no checks, no log, in a loop of its own."""
    import threading

    from aiohttp import web

    body = {"username": "app-5f1e2d", "password": "x" * 180, "expires_at": 0, "expires_in": 0}

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(svc.pki.cert_pem), str(svc.pki.key_pem))
    loop = asyncio.new_event_loop()

    async def start() -> int:
        app = web.Application()
        app.router.add_get(PATH, handler)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        return int(runner.addresses[0][1])

    threading.Thread(target=loop.run_forever, daemon=True).start()
    port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    return f"https://localhost:{port}"


async def _run(env: dict, keepalive: bool, mark=lambda: None) -> list[float]:
    import gc

    gc.collect()
    gc.freeze()  # the client's own full GC passes would land in the servers' percentiles
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(cadata=open(env["RELAY_CA_DER"], "rb").read())
    url = env["RELAY_URL"] + PATH
    key = env["RELAY_WT_KEY"]
    lat: list[float] = []
    todo = iter(range(N_REQUESTS))

    async def client():
        # aiohttp's client: httpx costs a few ms of CPU per request, which would measure the
        # client more than the relay
        conn = aiohttp.TCPConnector(ssl=ctx, limit=1, force_close=not keepalive)
        async with aiohttp.ClientSession(connector=conn) as c:
            async with c.get(url, headers=sign_headers("wt-1", key)) as r:  # warm-up, unmeasured
                await r.read()
            warm.append(1)
            await ready.wait()
            for _ in todo:
                t0 = time.perf_counter()
                async with c.get(url, headers=sign_headers("wt-1", key)) as r:
                    await r.read()
                    status = r.status
                lat.append(time.perf_counter() - t0)
                if status != 200:
                    raise RuntimeError(f"relay answered {status}")

    async def start():
        while len(warm) < CLIENTS:  # every client connected once (and the token fetched)
            await asyncio.sleep(0.01)
        mark()
        ready.set()

    ready = asyncio.Event()
    warm: list = []
    tasks = [client() for _ in range(CLIENTS)]
    await asyncio.gather(start(), *tasks)
    return lat


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] * 1000


def _shape(keepalive: bool, kind: str) -> None:
    # a fresh server + provider per shape: each starts cold, with no token cached
    import tempfile

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    with tempfile.TemporaryDirectory() as d:
        audit_log = f"{d}/audit.log"
        proc = ctx.Process(target=_serve, args=(child, kind, audit_log), daemon=True)
        proc.start()
        try:
            env = parent.recv()
            t0 = time.perf_counter()
            lat = asyncio.run(_run(env, keepalive, lambda: parent.send("mark")))
            wall = time.perf_counter() - t0
            parent.send("stats")
            stats = parent.recv()
            calls, cpu = stats["token_requests"], stats["cpu_s"]
            shape = "keep-alive    " if keepalive else "new connection"
            what = "relay (audit log on)" if kind == "relay" else "bare aiohttp handler"
            extra = (f"; provider token calls per 1,000 requests: {calls * 1000 / len(lat):.0f}"
                     if kind == "relay" else "")
            print(
                f"{what:20} {shape}: {len(lat)} requests, {CLIENTS} concurrent clients: "
                f"p50 {_pct(lat, 50):.1f} ms, p99 {_pct(lat, 99):.1f} ms, "
                f"mean {statistics.mean(lat) * 1000:.1f} ms, {len(lat) / wall:.0f} req/s, "
                f"server CPU {cpu / len(lat) * 1e6:.0f} us/request{extra}",
                flush=True,
            )
            parent.send("stop")
            parent.recv()
        finally:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


def _flood(spread: bool) -> None:
    """A device's token during a flood: `uplink relay` at a 1,024-file limit holding 1,020 slow
    TLS and 1,100 bare TCP connections, from 127.0.0.1 only (the per-address cap) or spread
    over 40 loopback addresses (the total cap), the device on 127.0.0.2."""
    import tempfile
    from pathlib import Path

    from tests.oidc_provider import OIDCProvider
    from tests.relay_flood import Flood, RelayProcess, ensure_fds, good_request, rss_kb

    if not ensure_fds(4096):
        print("relay flood: skipped (this process may not open 4,096 files)")
        return
    attackers = [f"127.0.1.{i}" for i in range(1, 41)] if spread else ["127.0.0.1"]
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the provider's request lines
    provider = OIDCProvider(lifetime=300).start()
    with tempfile.TemporaryDirectory() as d:
        relay = RelayProcess(provider, Path(d)).start()
        pid = relay.proc.pid if relay.proc else 0
        try:
            ctx = relay.ssl_context()

            async def go():
                await good_request(relay, ctx)  # token fetched before the flood
                before = rss_kb(pid)
                flood = Flood(relay.port, ctx)
                t0 = time.perf_counter()
                try:
                    await flood.open(1020, tls=True, addresses=attackers)
                    await flood.open(1100, tls=False, addresses=attackers)
                    t_open = time.perf_counter() - t0
                    held = await flood.settle(800)  # the cap at 1,024 files
                    during = rss_kb(pid)
                    got = [await good_request(relay, ctx) for _ in range(20)]
                finally:
                    await flood.close()
                after = before
                for _ in range(50):
                    await asyncio.sleep(0.1)
                    after = rss_kb(pid)
                    if after < before + 8 * 1024:
                        break
                return before, during, after, held, got, t_open

            before, during, after, held, got, t_open = asyncio.run(go())
        finally:
            log = relay.stop()
            provider.stop()
    ok = [t for st, t, _ in got if st == 200]
    lines = log.splitlines()
    print(
        f"relay flood from {len(attackers)} address(es) (1,020 slow TLS + 1,100 bare TCP opened "
        f"in {t_open:.1f} s, {held} held by the relay): device on 127.0.0.2 got "
        f"{len(ok)}/{len(got)} tokens, new TLS connection each, p50 {_pct(ok, 50):.0f} ms, "
        f"max {max(ok) * 1000:.0f} ms; relay RSS {before // 1024} MB before, "
        f"{during // 1024} MB during, {after // 1024} MB after; relay log {len(lines)} lines, "
        f"{len(log)} bytes",
        flush=True,
    )


def main(argv: list[str]) -> None:
    for keepalive in (True, False):
        for kind in ("relay", "bare"):  # side by side, same machine, same run
            _shape(keepalive, kind)
    for spread in (False, True):
        _flood(spread)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
