"""ThingsBoard's rate limits: the profile broker enforces them as ThingsBoard's transport does
(broker_profiles RULES["tb.rate_limits"]), and the firmware drains a 10,000-reading backlog
through it without one violation, paced by what getSessionLimits says."""

import json
import socket
import tempfile
import time

import pytest

from tests.bench.bench_drain import LIMITED_SCRIPT
from tests.integration import mpy
from tests.integration.broker_profiles import ThingsBoard, publish_packet
from tests.ledger import fw_identity
from tests.services import mosquitto_bin

pytestmark = pytest.mark.skipif(mosquitto_bin() is None, reason="mosquitto not installed")

TOKEN = "tb-rate-limited"
# small enough that the 1 s and the 60 s windows of every limit bind during the drain
LIMITS = {"messages": "20:1,300:60", "telemetryMessages": "50:1,2400:60",
          "telemetryDataPoints": "1000:1,18000:60,200000:3600"}


def _connect(port: int, token: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    body = b"\x00\x04MQTT\x04\x82\x00\x3c" + len(b"c1").to_bytes(2, "big") + b"c1" \
        + len(token).to_bytes(2, "big") + token.encode()
    s.sendall(bytes([0x10, len(body)]) + body)
    assert s.recv(4) == b"\x20\x02\x00\x00"
    return s


def test_the_profile_closes_a_device_over_its_data_point_limit(env):
    prof = ThingsBoard({TOKEN: "device"}, rate_limits={"telemetryDataPoints": "10:1"})
    proxy = env.proxy(prof)
    s = _connect(proxy.port, TOKEN)
    for i in range(4):  # 3 data points each: the fourth is over 10 per second
        s.sendall(publish_packet("v1/devices/me/telemetry", json.dumps({"a": i, "b": 1, "c": 2}).encode()))
    proxy.wait_for(lambda p: p.violations, what="a rate-limit violation")
    assert "[tb.rate_limits]" in proxy.violations[0] and "telemetryDataPoints" in proxy.violations[0]
    s.settimeout(5)
    assert s.recv(100) == b""  # and the connection is closed, as ThingsBoard closes it
    s.close()


def test_the_profile_answers_get_session_limits_with_its_rate_limits(env):
    proxy = env.proxy(ThingsBoard({TOKEN: "device"}, rate_limits=LIMITS, max_payload=4096, max_inflight=50))
    s = _connect(proxy.port, TOKEN)
    sub = len(b"v1/devices/me/rpc/response/+").to_bytes(2, "big") + b"v1/devices/me/rpc/response/+\x00"
    s.sendall(bytes([0x82, 2 + len(sub), 0, 1]) + sub)
    assert s.recv(5) == b"\x90\x03\x00\x01\x00"
    s.sendall(publish_packet("v1/devices/me/rpc/request/7", b'{"method":"getSessionLimits","params":{}}'))
    data = b""
    end = time.monotonic() + 5
    while b"maxPayloadSize" not in data or not data.endswith(b"}") and time.monotonic() < end:
        data += s.recv(4096)
    answer = json.loads(data[data.index(b"{"):])
    assert answer == {"maxPayloadSize": 4096, "maxInflightMessages": 50, "rateLimits": LIMITS}
    assert b"v1/devices/me/rpc/response/7" in data
    s.close()
    assert proxy.violations == []


@pytest.mark.slow
def test_a_10000_reading_backlog_drains_within_the_rate_limits(env):
    prof = ThingsBoard({TOKEN: "device"}, rate_limits=LIMITS)
    proxy = env.proxy(prof)
    n = 10000
    p = mpy.start(LIMITED_SCRIPT, compiled=True, heapsize="96k",
                  env={"N": str(n), "MODE": "limited", "BATCH": "20", "URL": proxy.url(), "TOKEN": TOKEN,
                       "SMALL": "1", "CA": "", "WINDOW": "", "DIR": tempfile.mkdtemp(prefix="uplink-tb-limits-")})
    try:
        p.expect("RESULT", timeout=600)
        p.expect("PACED", timeout=10)
    finally:
        p.kill()
    assert proxy.violations == [], p.output[-3000:]
    seqs = set()
    for _, topic, payload in proxy.published:
        if topic == "v1/devices/me/telemetry":
            doc = json.loads(payload)
            seqs.update(r["values"]["seq"] for r in (doc if isinstance(doc, list) else [doc]) if not fw_identity(r))
    assert seqs == set(range(n))  # every reading, on one connection: none refused
    paced = [ln for ln in p.output.splitlines() if ln.startswith("PACED")][0].split()
    assert int(paced[1]) > 0 and int(paced[2]) == 1, p.output[-2000:]
