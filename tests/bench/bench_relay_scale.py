"""Token relay replicas: a reboot wave of 10,000 devices (one new TLS connection each, as a
board does after a power cut) against today's single process, one replica on Redis behind
haproxy, and three replicas on Redis behind haproxy, in the same run.

Devices: 10,000 on 1,000 distinct Biotz-style credentials (password grant, one id_token per
credential). Each wave prints requests/s, p50/p99 from a device's first attempt to its token
(retries after a 503's Retry-After included), provider token calls, and CPU per request: the
replicas', and with Redis and haproxy counted in. The test OIDC provider and the clients run
in processes of their own (the clients in two), so their CPU is not counted. Then the same
cold wave with provider pacing at 100 calls/s for the three replicas, and Redis killed for
10 s under load with the recovery time.

Every replica keeps its audit log on, to a file, as `uplink relay` does. Loopback, on the
shared build box: the clients' TLS handshakes (Python, ECDSA P-256) are most of the CPU.

    python -m tests.bench relay_scale       (or: make bench BENCH_ARGS=relay_scale)
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import re
import secrets
import ssl
import tempfile
import time
from pathlib import Path

OPT_IN = True  # minutes of real processes: only when named
DEVICES = 10_000
CREDENTIALS = 1_000
CLIENT_PROCS = 2
CONCURRENCY = 100  # per client process
OUTAGE_S = 10.0


def _provider(conn, users) -> None:
    import logging

    from tests.oidc_provider import OIDCProvider

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    p = OIDCProvider(lifetime=3600).start()
    for u, pw in users:
        p.users[u] = pw
    conn.send((p.token_url, p.ca_pem))
    while True:
        cmd = conn.recv()
        if cmd == "stats":
            conn.send(p.token_requests)
        else:
            p.stop()
            conn.send(True)
            return


def _client(port: int, ca: str, devices: list, index: int, q) -> None:
    import gc

    from tests.relay_scale import wave

    gc.collect()
    gc.freeze()
    ctx = ssl.create_default_context(cafile=ca)

    # each client process its own loopback addresses: 64 device addresses each
    res = asyncio.run(wave(port, ctx, devices, concurrency=CONCURRENCY, addresses=64,
                           local_prefix=f"127.0.{index + 1}."))
    q.put((res.served, res.failed, res.retries, res.latencies, res.seconds, res.statuses))


def _wave(port: int, ca: str, devices: list) -> dict:
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    parts = [devices[i::CLIENT_PROCS] for i in range(CLIENT_PROCS)]
    t0 = time.perf_counter()
    procs = [ctx.Process(target=_client, args=(port, ca, part, i, q)) for i, part in enumerate(parts)]
    for p in procs:
        p.start()
    got = [q.get() for _ in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join(10)
    lat = sorted(x for g in got for x in g[3])
    statuses: dict = {}
    for g in got:
        for k, v in g[5].items():
            statuses[k] = statuses.get(k, 0) + v
    return {"served": sum(g[0] for g in got), "failed": sum(g[1] for g in got),
            "retries": sum(g[2] for g in got), "lat": lat, "wall": wall, "statuses": statuses}


def _cpu(pids: list[int]) -> float:
    from tests.relay_scale import pid_cpu_s

    return sum(pid_cpu_s(p) for p in pids)


def _config(name: str, n_replicas: int, shared: bool, spec: dict, prov, token_url: str, ca_pem: str,
            tmp: Path, *, rate: float = 10_000.0, waves=("cold", "warm")) -> None:
    from host_tools import relay_pki
    from tests.relay_scale import ReplicaProcess, percentile
    from tests.relay_services import HAProxy, Redis

    pki = relay_pki.ensure_relay_pki(tmp / "pki", ["localhost", "127.0.0.1"])
    slug = "".join(c if c.isalnum() else "-" for c in name)
    redis = Redis(tmp / f"redis-{slug}").start() if shared else None
    base = {"cert_pem": str(pki.cert_pem), "key_pem": str(pki.key_pem), "port": 0, "token_url": token_url,
            "provider_ca": ca_pem, "fleet": spec, "redis": redis.url if redis else None,
            "state_key": secrets.token_hex(32), "trusted_proxies": ["127.0.0.1"] if shared else [],
            "provider_rate": rate, "provider_burst": min(rate, 100.0), "max_connections": 4000}
    reps, proxy = [], None
    try:
        for i in range(n_replicas):
            spec_i = dict(base, audit_log=str(tmp / f"{slug}-r{i}-audit.log"))
            reps.append(ReplicaProcess(tmp / "replicas", spec_i, f"{slug}-r{i}").start())
        if shared:
            proxy = HAProxy(tmp / f"haproxy-{slug}", {"fleet": [r.port for r in reps]}).start()
            port = proxy.ports["fleet"]
        else:
            port = reps[0].port
        pids = [r.proc.pid for r in reps if r.proc]
        rpid = [redis.proc.pid] if redis is not None and redis.proc is not None else []
        hpid = [proxy.proc.pid] if proxy is not None and proxy.proc is not None else []
        aux = rpid + hpid
        for kind in waves:
            prov.send("stats")
            calls0 = prov.recv()
            cpu0, r0, h0 = _cpu(pids), _cpu(rpid), _cpu(hpid)
            w = _wave(port, str(pki.ca_pem), spec["devices"])
            cpu, rc, hc = _cpu(pids) - cpu0, _cpu(rpid) - r0, _cpu(hpid) - h0
            prov.send("stats")
            calls = prov.recv() - calls0
            n = len(spec["devices"])
            answers = ", ".join(f"{k or 'no answer'}: {v}" for k, v in sorted(w["statuses"].items()) if k != 200)
            print(f"{name:44} {kind}: {w['served']}/{n} served ({w['failed']} failed, {w['retries']} retries"
                  f"{' after ' + answers if answers else ''}), {n / w['wall']:.0f} req/s over {w['wall']:.1f} s, "
                  f"p50 {percentile(w['lat'], 50) * 1000:.0f} ms, p99 {percentile(w['lat'], 99) * 1000:.0f} ms, "
                  f"provider calls {calls} ({CREDENTIALS} distinct credentials), "
                  f"CPU/request {cpu / n * 1e6:.0f} us replicas"
                  + (f" + Redis {rc / n * 1e6:.0f} us + haproxy {hc / n * 1e6:.0f} us" if aux else ""), flush=True)
    finally:
        if proxy is not None:
            proxy.stop()
        for r in reps:
            r.stop()
        if redis is not None:
            redis.stop()
    errors = sum((tmp / "replicas" / f"{r.replica_id}.log").read_text().count("failed (") for r in reps)
    reasons: dict = {}
    for r in reps:
        for m in re.finditer(r"status=(?!200)(\d+) reason=(\S+)", (tmp / f"{r.replica_id}-audit.log").read_text()):
            reasons[f"{m[1]} {m[2]}"] = reasons.get(f"{m[1]} {m[2]}", 0) + 1
    if errors or reasons:
        print(f"{'':44} refusals by reason (audit logs): {reasons or 'none'}; Redis failures logged: {errors}",
              flush=True)


def _outage(spec: dict, token_url: str, ca_pem: str, tmp: Path) -> None:
    """Three replicas under a steady device load; Redis killed for OUTAGE_S and restarted empty."""
    from host_tools import relay_pki
    from host_tools.relay import sign_headers
    from tests.relay_scale import ReplicaProcess, ask
    from tests.relay_services import HAProxy, Redis

    pki = relay_pki.ensure_relay_pki(tmp / "pki", ["localhost", "127.0.0.1"])
    redis = Redis(tmp / "redis-outage").start()
    base = {"cert_pem": str(pki.cert_pem), "key_pem": str(pki.key_pem), "port": 0, "token_url": token_url,
            "provider_ca": ca_pem, "fleet": spec, "redis": redis.url, "state_key": secrets.token_hex(32),
            "trusted_proxies": ["127.0.0.1"], "provider_rate": 1000.0, "provider_burst": 100.0}
    reps = [ReplicaProcess(tmp / "replicas", base, f"outage-r{i}").start() for i in range(3)]
    proxy = HAProxy(tmp / "haproxy-outage", {"fleet": [r.port for r in reps]}).start()
    ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
    port = proxy.ports["fleet"]
    timeline: list = []
    replays: list = []

    async def go():
        devs = spec["devices"][:50]
        used = []
        for name, key, _ in devs[:20]:
            h = sign_headers(name, key)
            await ask(port, ctx, h, "127.0.3.1")
            used.append(h)
        stop = asyncio.Event()

        async def device(k):
            i = k
            while not stop.is_set():
                name, key, _ = devs[i % len(devs)]
                status, _, _ = await ask(port, ctx, sign_headers(name, key), f"127.0.3.{2 + k}")
                timeline.append((time.monotonic(), status))
                i += 4
                await asyncio.sleep(0.02)

        async def replayer():
            while not stop.is_set():
                for h in used:
                    replays.append((await ask(port, ctx, h, "127.0.3.20"))[0])
                await asyncio.sleep(0.1)

        tasks = [asyncio.create_task(device(k)) for k in range(4)] + [asyncio.create_task(replayer())]
        t_kill, t_up = await redis.outage(2, OUTAGE_S, 5)
        stop.set()
        await asyncio.gather(*tasks)
        return t_kill, t_up

    try:
        t_kill, t_up = asyncio.run(go())
    finally:
        proxy.stop()
        for r in reps:
            r.stop()
        redis.stop()
    before = [s for t, s in timeline if t < t_kill]
    down = [s for t, s in timeline if t_kill <= t < t_up]
    after = [(t, s) for t, s in timeline if t >= t_up]
    first_ok = next((t for t, s in after if s == 200), None)
    late_503 = sum(1 for t, s in after if first_ok is not None and t > first_ok and s != 200)
    down_kinds = {s: down.count(s) for s in sorted(set(down))}
    print(f"Redis killed for {OUTAGE_S:.0f} s under 4 devices asking every ~20 ms (3 replicas): "
          f"before {before.count(200)}/{len(before)} 200; while down {down_kinds}; "
          f"recovery {((first_ok - t_up) if first_ok else float('nan')):.2f} s after Redis came back empty, "
          f"then {late_503} non-200 of {len(after)}; replayed captured requests accepted: "
          f"{replays.count(200)} of {len(replays)}", flush=True)


def main(argv: list[str]) -> None:
    global DEVICES, CREDENTIALS
    from tests.relay_scale import fleet_spec

    for a in argv:  # a quicker look: --devices=1000 --credentials=100
        if a.startswith("--devices="):
            DEVICES = int(a.split("=", 1)[1])
        elif a.startswith("--credentials="):
            CREDENTIALS = int(a.split("=", 1)[1])
    spec = fleet_spec(DEVICES, CREDENTIALS)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    prov = ctx.Process(target=_provider, args=(child, spec["users"]), daemon=True)
    prov.start()
    token_url, ca_pem = parent.recv()
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            print(f"reboot wave: {DEVICES} devices, {CREDENTIALS} distinct credentials, one new TLS connection "
                  f"each, {CLIENT_PROCS} client processes x {CONCURRENCY} concurrent", flush=True)
            _config("single process, memory (today)", 1, False, spec, parent, token_url, ca_pem, tmp)
            _config("1 replica, Redis, haproxy", 1, True, spec, parent, token_url, ca_pem, tmp)
            _config("3 replicas, Redis, haproxy", 3, True, spec, parent, token_url, ca_pem, tmp)
            _config("3 replicas, Redis, haproxy, pacing 100/s", 3, True, spec, parent, token_url, ca_pem, tmp,
                    rate=100.0, waves=("cold",))
            _outage(spec, token_url, ca_pem, tmp)
    finally:
        parent.send("stop")
        parent.recv()
        prov.join(10)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
