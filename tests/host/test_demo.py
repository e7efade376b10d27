"""`make demo` as a new user runs it: telemetry arrives and the RPC round trip shows."""

import subprocess
import sys

import pytest

from tests.services import mosquitto_bin


@pytest.mark.skipif(mosquitto_bin() is None, reason="mosquitto not installed")
def test_demo_shows_telemetry_and_rpc_reply():
    res = subprocess.run([sys.executable, "-m", "host_tools.demo", "--seconds", "10", "--interval", "1"],
                         capture_output=True, text=True, timeout=90)
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    assert out.count("telemetry ") >= 3, out
    assert "RPC setLed" in out and 'rpc/response/1 {"led": true}' in out, out
    assert " E " not in out and "Traceback" not in out, out
