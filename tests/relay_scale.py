"""Relay replicas at fleet scale, for tests/host/test_relay_scale.py and `make bench
BENCH_ARGS=relay_scale`.

`ReplicaProcess` runs one relay replica in its own process: host_tools.relay.Relay with
RedisState (or MemoryState: today's single process), PROXY protocol from trusted addresses,
the admin listener, for a generated fleet of N devices on C distinct Biotz-style credentials
(password grant, users `dev-<i>`; a per-device password fleet has C = N). It takes a JSON spec
instead of a fleet file, so 10,000 devices start in a second.

`wave()` is a reboot wave: every device opens one new TLS connection, asks once with a signed
request, and (as a board does) asks again after Retry-After when answered 503.
Loopback only; every count is bounded; every process is stopped by `stop()`.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from host_tools.relay import PATH, sign_headers

ROOT = Path(__file__).resolve().parents[1]


def fleet_spec(n_devices: int, n_credentials: int) -> dict:
    """Devices dev-0..dev-N-1 with their keys; device i logs in as user i % C."""
    return {
        "devices": [[f"dev-{i}", secrets.token_hex(32), i % n_credentials] for i in range(n_devices)],
        "users": [[f"user-{j}@devices.example", f"pw-{j}-{secrets.token_hex(4)}"] for j in range(n_credentials)],
    }


def add_users(provider, spec: dict) -> None:
    for user, pw in spec["users"]:
        provider.users[user] = pw


# -- one replica process ----------------------------------------------------------------------


def _replica_main(spec_path: str) -> None:
    import logging

    from host_tools import oidc
    from host_tools.relay import Relay, RelayDevice, RelaySettings
    from host_tools.relay_conns import freeze_heap
    from host_tools.relay_state import MemoryState, RedisState
    from tests.oidc_provider import BIOTZ_CLIENT

    spec = json.loads(Path(spec_path).read_text())
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    if spec.get("audit_log"):
        h = logging.FileHandler(spec["audit_log"])
        h.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
        audit = logging.getLogger("uplink.relay.audit")
        audit.addHandler(h)
        audit.setLevel(logging.INFO)
        audit.propagate = False
    pace = (spec["provider_rate"], spec["provider_burst"], 5.0)
    fleet = spec["fleet"]
    sources = [oidc.BiotzSource(oidc.PasswordSettings(spec["token_url"], BIOTZ_CLIENT, user, pw,
                                                      ca=spec["provider_ca"]))
               for user, pw in fleet["users"]]
    devices = [RelayDevice(name, key, sources[j]) for name, key, j in fleet["devices"]]
    settings = RelaySettings(Path(spec["cert_pem"]), Path(spec["key_pem"]), host="127.0.0.1", port=spec["port"],
                             min_life_s=60, max_per_address=spec.get("max_per_address", 64),
                             max_connections=spec.get("max_connections", 1000),
                             trusted_proxies=tuple(spec.get("trusted_proxies", ())),
                             admin_port=spec.get("admin_port"), replica_id=spec["replica_id"])
    if spec.get("redis"):
        state = RedisState(spec["redis"], bytes.fromhex(spec["state_key"]), pace=pace)
    else:
        state = MemoryState(window_s=settings.max_skew_s, pace=pace)
    relay = Relay(settings, devices, state=state)

    async def serve():
        await relay.start()
        freeze_heap()
        print(f"READY {relay.port} {relay.admin.port if relay.admin else 0}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        calls = sum(s.provider_calls for s in sources)
        await relay.stop()
        await state.close()
        for s in sources:
            await s.aclose()
        print(f"PROVIDER_CALLS {calls}", flush=True)

    asyncio.run(serve())


@dataclass
class ReplicaProcess:
    workdir: Path
    spec: dict
    replica_id: str = "r0"
    proc: subprocess.Popen | None = None
    port: int = 0
    admin_port: int = 0
    out: list = field(default_factory=list)

    def start(self) -> "ReplicaProcess":
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / f"{self.replica_id}.json"
        path.write_text(json.dumps(dict(self.spec, replica_id=self.replica_id)))
        path.chmod(0o600)  # device keys and provider passwords
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        self.log = open(self.workdir / f"{self.replica_id}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.relay_scale", "replica", str(path)],
                                     stdout=subprocess.PIPE, stderr=self.log, env=env, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()  # blocks until READY or exit
        if not line.startswith("READY"):
            self.proc.wait(5)
            raise RuntimeError(f"replica {self.replica_id} did not start: "
                               f"{(self.workdir / f'{self.replica_id}.log').read_text()[-2000:]}")
        _, port, admin = line.split()
        self.port, self.admin_port = int(port), int(admin)
        return self

    def cpu_s(self) -> float:
        """User + system CPU seconds this replica has used so far."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int | None:
        """SIGINT; the provider calls this replica made (None if it could not say)."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        self.proc.send_signal(signal.SIGINT)
        try:
            out, _ = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate(timeout=5)
            return None
        finally:
            self.log.close()
        for line in out.decode().splitlines():
            if line.startswith("PROVIDER_CALLS"):
                return int(line.split()[1])
        return None


def pid_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- devices ----------------------------------------------------------------------------------


async def ask(port: int, ctx: ssl.SSLContext, headers: dict, local: str, *, path: str = PATH,
              timeout: float = 30.0) -> tuple[int, dict, bytes]:
    """One request on a new TLS connection from `local` (HTTP/1.1, Connection: close):
    (status, headers, body); status 0 when the connection failed."""
    async def go():
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost",
                                             local_addr=(local, 0))
        try:
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            w.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{head}\r\n".encode())
            data = await r.read()
        finally:
            w.transport.abort()
        top, _, body = data.partition(b"\r\n\r\n")
        lines = top.decode("latin-1").split("\r\n")
        hdrs = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        return int(lines[0].split()[1]), hdrs, body

    try:
        return await asyncio.wait_for(go(), timeout)
    except (OSError, ssl.SSLError, asyncio.TimeoutError, IndexError, ValueError):
        return 0, {}, b""


@dataclass
class WaveResult:
    served: int
    failed: int
    retries: int
    latencies: list  # seconds from a device's first attempt to its 200 (retries included)
    seconds: float  # wall time of the whole wave
    statuses: dict


async def wave(port: int, ctx: ssl.SSLContext, devices: list, *, concurrency: int = 100,
               addresses: int = 32, max_tries: int = 20, local_prefix: str = "127.0.1.") -> WaveResult:
    """Every device (name, key) asks once on a new connection; a 503 is retried after its
    Retry-After (a board backs off so), a failed connection after 0.2 s."""
    sem = asyncio.Semaphore(concurrency)
    lat: list[float] = []
    statuses: dict[int, int] = {}
    counts = {"retries": 0, "failed": 0}

    async def one(i: int, name: str, key: str):
        local = f"{local_prefix}{1 + i % addresses}"
        t0 = None  # the device's first attempt (not its wait for a client slot)
        for attempt in range(max_tries):
            async with sem:
                t0 = t0 or time.perf_counter()
                status, hdrs, _ = await ask(port, ctx, sign_headers(name, key), local)
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                lat.append(time.perf_counter() - t0)
                return
            if attempt + 1 < max_tries:
                counts["retries"] += 1
                await asyncio.sleep(float(hdrs.get("retry-after", "0.2")) if status == 503 else 0.2)
        counts["failed"] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i, name, key) for i, (name, key, _) in enumerate(devices)))
    return WaveResult(len(lat), counts["failed"], counts["retries"], sorted(lat), time.perf_counter() - t0,
                      statuses)


def percentile(xs: list, p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


if __name__ == "__main__":
    if sys.argv[1:2] == ["replica"]:
        _replica_main(sys.argv[2])
    else:
        sys.exit("usage: python -m tests.relay_scale replica SPEC.json")
