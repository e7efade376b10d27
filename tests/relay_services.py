"""Real redis-server and haproxy processes on loopback for the relay's replica tests and bench.

Each test starts its own (free ports, its own directory), so pytest-xdist workers never share
one. Redis runs without persistence: a restart is a Redis that comes back empty.
"""

from __future__ import annotations

import asyncio
import resource
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from host_tools import child
from tests.services import free_port, wait_port


def redis_bin() -> str | None:
    return shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin:/usr/sbin")


def haproxy_bin() -> str | None:
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/bin")


def need_redis() -> str:
    exe = redis_bin()
    if exe is None:
        pytest.skip("redis-server is not installed (make setup installs it via apt when run as root)")
    return exe


def need_haproxy() -> str:
    exe = haproxy_bin()
    if exe is None:
        pytest.skip("haproxy is not installed (make setup installs it via apt when run as root)")
    return exe


class Redis:
    """One redis-server on 127.0.0.1, no persistence; kill() and start() keep its port."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "Redis":
        exe = redis_bin()
        if exe is None:
            raise RuntimeError("redis-server is not installed: make setup as root, or apt-get install redis-server")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--protected-mode", "yes", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, timeout=10)
        return self

    def kill(self) -> None:
        """SIGKILL: a crash; what it held is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        child.stop(self.proc)

    async def outage(self, before_s: float, down_s: float, after_s: float) -> tuple[float, float]:
        """After before_s, killed for down_s and started again empty, then after_s more:
        (monotonic time of the kill, of the restart)."""
        await asyncio.sleep(before_s)
        t_kill = time.monotonic()
        await asyncio.to_thread(self.kill)
        await asyncio.sleep(down_s)
        await asyncio.to_thread(self.start)  # empty: no persistence
        t_up = time.monotonic()
        await asyncio.sleep(after_s)
        return t_kill, t_up


class HAProxy:
    """haproxy in TCP mode in front of relay replicas, speaking PROXY protocol v2 to them.

    `frontends`: name -> list of backend ports; each frontend gets a free port of its own
    (`ports[name]`), balanced round-robin over its backends."""

    def __init__(self, workdir: Path, frontends: dict[str, list[int]], *, source: str = "127.0.0.1",
                 checks: dict[int, int] | None = None):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.frontends = frontends
        self.source = source  # the address haproxy connects to the replicas from
        # backend port -> its admin port: haproxy asks GET /readyz there every 100 ms
        self.checks = checks or {}
        self.ports = {name: free_port() for name in frontends}
        self.proc: subprocess.Popen | None = None

    def config(self) -> str:
        # each connection costs haproxy two descriptors, and it refuses to start when the
        # hard open-file limit is below what maxconn needs
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        maxconn = 20000 if hard == resource.RLIM_INFINITY else max(100, min(20000, (hard - 200) // 2))
        lines = ["global", f"    maxconn {maxconn}"]
        if self.checks:  # status() reads the checks' verdicts there
            lines.append(f"    stats socket {self.dir / 'admin.sock'}")
        lines += ["defaults", "    mode tcp", "    timeout connect 5s",
                 "    timeout client 60s", "    timeout server 60s", ""]
        for name, backends in self.frontends.items():
            lines += [f"frontend fe_{name}", f"    bind 127.0.0.1:{self.ports[name]}",
                      f"    default_backend be_{name}", "", f"backend be_{name}", "    balance roundrobin",
                      f"    source {self.source}"]
            if any(p in self.checks for p in backends):
                lines.append("    option httpchk GET /readyz")
            lines += [f"    server r{i} 127.0.0.1:{p} send-proxy-v2"
                      + (f" check port {self.checks[p]} inter 100 fall 1 rise 1" if p in self.checks else "")
                      for i, p in enumerate(backends)]
            lines.append("")
        return "\n".join(lines)

    def start(self) -> "HAProxy":
        exe = haproxy_bin()
        if exe is None:
            raise RuntimeError("haproxy is not installed: make setup as root, or apt-get install haproxy")
        cfg = self.dir / "haproxy.cfg"
        cfg.write_text(self.config())
        self.log = open(self.dir / "haproxy.log", "wb")
        self.proc = subprocess.Popen([exe, "-db", "-f", str(cfg)], stdout=self.log, stderr=subprocess.STDOUT)
        end = time.monotonic() + 10
        for port in self.ports.values():
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"haproxy exited: {(self.dir / 'haproxy.log').read_text()}")
                try:
                    wait_port(port, timeout=0.2)
                    break
                except TimeoutError:
                    if time.monotonic() > end:
                        raise
        return self

    def stop(self) -> None:
        child.stop(self.proc)
        if self.proc is not None:
            self.log.close()

    def status(self, frontend: str, server: str) -> str:
        """haproxy's view of a backend server ("UP", "DOWN", ...), from its stats socket."""
        import socket

        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.dir / "admin.sock"))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, *rows = data.decode().splitlines()
        cols = head.lstrip("# ").split(",")
        for row in rows:
            f = dict(zip(cols, row.split(","), strict=False))
            if f.get("pxname") == f"be_{frontend}" and f.get("svname") == server:
                return f["status"].split()[0]
        return "?"
