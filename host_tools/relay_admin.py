"""The relay's admin listener: `/healthz`, `/readyz` and `/metrics`, never on the device port.

- `/healthz`: 200 while the process serves (the balancer's liveness check).
- `/readyz`: 200 when the shared store answers and the relay certificate is valid now; 503
  with the reasons otherwise (the balancer takes the replica out of rotation).
- `/metrics`: Prometheus' text format (prometheus_client, one registry per relay): requests
  by route and status, latency histogram, refusals by reason, nonce refusals, provider calls,
  token cache hits (memory, redis), Redis errors, open connections.

Plain HTTP: bind it to a private address (the default is 127.0.0.1). It tells no secrets, but
who asks how many devices are refused is the operator, not the LAN.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from host_tools.relay import Relay

log = logging.getLogger("uplink.relay")

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Counters the request path updates; totals kept elsewhere are read at scrape time."""

    def __init__(self, relay: "Relay"):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.relay = relay
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("uplink_relay_requests", "Requests answered, by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("uplink_relay_request_seconds", "Time to answer a request",
                                 ["route"], buckets=_BUCKETS, registry=self.registry)
        self.refusals = Counter("uplink_relay_refusals", "Requests refused, by reason",
                                ["reason"], registry=self.registry)
        self.nonce_refusals = Counter("uplink_relay_nonce_refusals",
                                      "Requests refused because their nonce was seen before",
                                      registry=self.registry)
        self.registry.register(_Totals(relay))

    def observe(self, route: str, status: int, reason: str, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if status >= 400:
            self.refusals.labels(reason).inc()
            if reason == "replayed-nonce":
                self.nonce_refusals.inc()

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _Totals:
    """What the token sources, the state store and the gate count themselves."""

    def __init__(self, relay: "Relay"):
        self.relay = relay

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        srcs = {id(d.source): d.source for d in self.relay.devices.values()}.values()
        calls = CounterMetricFamily("uplink_relay_provider_calls", "Requests sent to the token endpoints")
        calls.add_metric([], sum(getattr(s, "provider_calls", 0) for s in srcs))
        yield calls
        hits = CounterMetricFamily("uplink_relay_token_cache_hits",
                                   "Tokens handed out from a cache, by tier", labels=["tier"])
        hits.add_metric(["memory"], sum(getattr(s, "memory_hits", 0) for s in srcs))
        hits.add_metric(["redis"], sum(getattr(s, "shared_hits", 0) for s in srcs))
        yield hits
        errs = CounterMetricFamily("uplink_relay_redis_errors", "Redis calls that failed")
        errs.add_metric([], getattr(self.relay.state, "errors", 0))
        yield errs
        gate = self.relay.gate
        conns = GaugeMetricFamily("uplink_relay_open_connections", "Device connections open")
        conns.add_metric([], gate.open if gate is not None else 0)
        yield conns


def cert_problem(cert_pem: Path, now: dt.datetime | None = None) -> str | None:
    """Why the relay certificate cannot be served now, or None."""
    from cryptography import x509

    now = now or dt.datetime.now(dt.timezone.utc)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    except (OSError, ValueError) as e:
        return f"certificate {cert_pem}: {e}"
    if now < cert.not_valid_before_utc:
        return f"certificate not valid before {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}"
    if now >= cert.not_valid_after_utc:
        return f"certificate expired {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
    return None


class Admin:
    """The admin listener of one relay (plain HTTP)."""

    def __init__(self, relay: "Relay", host: str, port: int):
        self.relay = relay
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        self.app = web.Application()
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)
        self.app.router.add_get("/metrics", self._metrics)

    async def start(self) -> int:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        addrs: Any = self._runner.addresses
        self.port = int(addrs[0][1])
        log.info("relay admin listener on http://%s:%d (/healthz /readyz /metrics)", self.host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "replica": self.relay.settings.replica_id})

    async def _readyz(self, request: web.Request) -> web.Response:
        problems = []
        if not await self.relay.state.ready():
            problems.append(f"{self.relay.state.name} state store does not answer")
        cert = cert_problem(self.relay.settings.cert_pem)
        if cert:
            problems.append(cert)
        if self.relay.port is None:
            problems.append("device listener not started")
        body = {"ready": not problems, "replica": self.relay.settings.replica_id, "problems": problems}
        return web.json_response(body, status=503 if problems else 200)

    async def _metrics(self, request: web.Request) -> web.Response:
        m = self.relay.metrics
        if m is None:
            return web.Response(status=501, text="prometheus_client is not installed: "
                                                 "pip install 'uplink-host-tools[relay]'\n")
        from prometheus_client import CONTENT_TYPE_LATEST

        return web.Response(body=m.text(), headers={"Content-Type": CONTENT_TYPE_LATEST})
