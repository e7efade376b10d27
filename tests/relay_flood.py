"""A real `uplink relay` process under a connection flood, for tests/host/test_relay_flood.py and
`make bench BENCH_ARGS=relay`.

`RelayProcess` runs `python -m host_tools.cli relay` for a one-device fleet (the loopback OIDC
provider behind it) with RLIMIT_NOFILE set in the child only (preexec_fn), its log to a file.
`Flood` opens slow TLS connections (handshake done, request headers never finished) and bare
TCP connections (nothing sent) from given loopback addresses and holds them until closed.
`good_request` is a device: a new TLS connection from another loopback address, a correctly
signed request. Loopback only; every count is bounded and every socket is closed by `close()`.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

from host_tools.relay import PATH, sign_headers
from tests.oidc_provider import WEIGHTRON_API_KEY, WEIGHTRON_CLIENT

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "scale-1"
SLOW_HEADERS = b"GET /v1/credentials HTTP/1.1\r\nHost: localhost\r\nX-Uplink-Device: "

FLEET = """
[relay]
url = "https://127.0.0.1:8443"
hosts = ["127.0.0.1", "localhost"]
listen = "127.0.0.1:0"
min_life_s = 30

[devices.{device}]
board = "host"
[devices.{device}.platform]
kind = "weightron"
device_id = "{device}"
credentials = "relay"
[devices.{device}.platform.oidc]
token_url = "{token_url}"
access_url = "{access_url}"
client_id = "{client_id}"
client_secret = "secret:wt_secret"
api_key = "secret:wt_api_key"
"""


def ensure_fds(n: int) -> bool:
    """This process may open n files (soft limit raised toward the hard one if needed)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= n:
        return True
    if hard != resource.RLIM_INFINITY and hard < n:
        return False
    resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))
    return True


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def nofile_soft(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    return 0


class RelayProcess:
    def __init__(self, provider, workdir: Path, *, nofile: tuple[int, int] = (1024, 1024),
                 args: tuple[str, ...] = (), umask: int | None = None,
                 state_dir: Path | None = None, name: str = "relay"):
        from tests.services import free_port

        self.provider = provider
        self.dir = workdir
        self.nofile = nofile
        self.args = args
        self.umask = umask
        self.state_dir = state_dir or workdir / "state"
        self.port = free_port()
        self.log_path = workdir / f"{name}.log"  # replicas sharing a workdir: one log each
        self.fleet = workdir / "fleet.toml"
        self.secrets = workdir / "secrets.json"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "RelayProcess":
        from host_tools import relay_pki
        from host_tools.secrets import SecretStore
        from tests.services import wait_port

        p = self.provider
        if not self.secrets.exists():  # replicas share one fleet and secret store
            self.fleet.write_text(FLEET.format(device=DEVICE, token_url=p.token_url,
                                               access_url=p.access_url, client_id=WEIGHTRON_CLIENT[0]))
            self.secrets.write_text(json.dumps({"wt_secret": WEIGHTRON_CLIENT[1],
                                                "wt_api_key": WEIGHTRON_API_KEY}))
            self.secrets.chmod(0o600)
        env = dict(os.environ, SSL_CERT_FILE=p.ca_pem, UPLINK_STATE_DIR=str(self.state_dir),
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        nofile, umask = self.nofile, self.umask

        def limit():  # in the child only: the test process keeps its own limit and umask
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)
            if umask is not None:
                os.umask(umask)

        self._log = open(self.log_path, "wb")
        self.env = env
        self.proc = subprocess.Popen(
            [*self._uplink(), "relay", "--listen", f"127.0.0.1:{self.port}", *self.args],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=limit, cwd=self.dir)
        wait_port(self.port, timeout=30)
        store = SecretStore(self.secrets, use_keyring=False, env={})
        self.key = relay_pki.device_key(store, DEVICE)  # created by the relay at start
        pki = relay_pki.ensure_relay_pki(self.state_dir, ["127.0.0.1", "localhost"])
        self.ca = str(pki.ca_pem)
        return self

    def _uplink(self) -> list[str]:
        return [sys.executable, "-m", "host_tools.cli", "--fleet", str(self.fleet),
                "--secrets-file", str(self.secrets), "--no-keyring"]

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """`uplink ARGS` on this relay's fleet, secrets and state (e.g. relay revoke DEVICE)."""
        return subprocess.run([*self._uplink(), *args], env=self.env, capture_output=True, text=True,
                              timeout=60, cwd=self.dir)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca)

    def stop(self) -> str:
        """SIGINT (a clean stop: the relay logs its last counts), then the log's text."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.log_path.read_text(errors="replace")


async def good_request(relay: RelayProcess, ctx: ssl.SSLContext, *, local: str = "127.0.0.2",
                       timeout: float = 30.0) -> tuple[int, float, dict]:
    """One device request on a new TLS connection from `local`: status, seconds, body."""
    t0 = time.perf_counter()
    transport = httpx.AsyncHTTPTransport(verify=ctx, local_address=local, retries=0)
    async with httpx.AsyncClient(transport=transport, timeout=timeout) as c:
        r = await c.get(f"https://127.0.0.1:{relay.port}{PATH}",
                        headers=sign_headers(DEVICE, relay.key))
    return r.status_code, time.perf_counter() - t0, (r.json() if r.status_code == 200 else {})


class Flood:
    """Slow TLS and bare TCP connections to the relay, held until the relay or close() ends
    them. `held()` says how many are still open (the relay has not closed them)."""

    def __init__(self, port: int, ctx: ssl.SSLContext):
        self.port = port
        self.ctx = ctx
        self.writers: list[asyncio.StreamWriter] = []
        self.readers: list[asyncio.StreamReader] = []
        self.failed = 0

    async def _open(self, tls: bool, local: str, sem: asyncio.Semaphore) -> None:
        async with sem:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(
                    "127.0.0.1", self.port, local_addr=(local, 0),
                    ssl=self.ctx if tls else None, server_hostname="localhost" if tls else None,
                    ssl_handshake_timeout=10 if tls else None), 10)
                if tls:
                    w.write(SLOW_HEADERS)  # the start of a request, never finished
                    await w.drain()
            except (OSError, asyncio.TimeoutError):
                self.failed += 1  # refused or reset by the relay: it is guarding its slots
                return
            self.readers.append(r)
            self.writers.append(w)

    async def open(self, n: int, *, tls: bool, addresses: list[str], concurrency: int = 100):
        sem = asyncio.Semaphore(concurrency)
        await asyncio.gather(*(self._open(tls, addresses[i % len(addresses)], sem)
                               for i in range(n)))

    def held(self) -> int:
        return sum(1 for r in self.readers if not r.at_eof() and r.exception() is None)

    async def settle(self, at_most: int, timeout: float = 10.0) -> int:
        """held(), once the relay's resets of refused connections have arrived (or timeout)."""
        for _ in range(int(timeout / 0.05)):
            if self.held() <= at_most:
                break
            await asyncio.sleep(0.05)
        return self.held()

    async def wait_closed_by_relay(self, timeout: float) -> int:
        """Read from every held connection until the relay closes it or `timeout` passes;
        returns how many the relay closed."""
        async def one(r: asyncio.StreamReader) -> bool:
            try:
                while await r.read(4096):
                    pass
                return True
            except (OSError, ssl.SSLError):
                return True

        res = await asyncio.gather(*(asyncio.wait_for(one(r), timeout) for r in self.readers),
                                   return_exceptions=True)
        return sum(1 for x in res if x is True)

    async def close(self) -> None:
        for w in self.writers:
            w.transport.abort()
        self.writers.clear()
        self.readers.clear()
        await asyncio.sleep(0)
