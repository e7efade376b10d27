"""`uplink sim`: the ESP32-sized default heap, and a firmware that cannot run there (a crash
loop that ends in safe mode, a heap too small to import it) fails with the reason."""

from __future__ import annotations

import pytest

from host_tools import hostboard
from tests.host.test_cli import host_fleet, subscribe
from tests.host.uplink_helpers import Env

NO_BROKER = """
[devices.bench]
board = "esp32-devkitc"
[devices.bench.platform]
kind = "thingsboard"
url = "mqtt://127.0.0.1:1"
token = "secret:tok"
"""


def env_for(tmp_path, text=NO_BROKER) -> Env:
    env = Env(tmp_path, text)
    env.env["UPLINK_SECRET_TOK"] = "sim-token-3391"
    return env


@pytest.mark.timeout(120)
def test_default_memory_is_the_boards_chip_and_the_firmware_publishes_in_it(tmp_path, broker):
    if not hostboard.esp32_model():
        pytest.skip(f"no ESP32 model: {hostboard.esp32_model_missing()}")
    # what a real board has: Wi-Fi networks (the Wi-Fi manager loads) and TLS
    fleet = host_fleet(broker, "esp32-devkitc").replace(broker.url("mqtt"), broker.url("mqtts"))
    fleet = fleet.replace('token = "secret:tok"', f'token = "secret:tok"\nca = "{broker.pki.ca_pem}"')
    env = env_for(tmp_path, '[defaults]\nwifi.networks = [{ ssid = "home", password = "secret:tok" }]\n'
                  + fleet)
    got, c = subscribe(broker, "v1/devices/me/telemetry")
    try:
        r = env.run("sim", "bench", "--seconds", "8")
    finally:
        c.loop_stop()
    assert r.code == 0, r.output
    # an esp32-devkitc: the ESP32's memory (-X chip=esp32), its IDF heap and the GC heap's growth
    assert "bench on the host board (compiled, the esp32's memory;" in r.stderr
    assert got and "MemoryError" not in r.stdout and "ENOMEM" not in r.stdout


@pytest.mark.timeout(180)
def test_a_crash_loop_fails_with_its_reason(tmp_path):
    env = env_for(tmp_path)
    # the sources do not fit an ESP32's heap: every boot dies of MemoryError, three in a row
    # make the firmware's crash-loop guard stop it
    r = env.run("sim", "bench", "--source", "--heapsize", "96k", "--seconds", "120")
    assert r.code == 1, r.output
    assert r.stderr.count("[host board] the firmware reset itself: booting again") == 3  # the 4th boot stops
    assert ("error: the firmware crash-looped: 3 crash exits in a row; the last: ") in r.stderr
    assert "; it stopped in safe mode; it ran out of memory with a 96k heap (" in r.stderr
    assert "with --source the board's heap also compiles the modules" in r.stderr
    assert "sim-token-3391" not in r.output


@pytest.mark.timeout(60)
def test_a_heap_too_small_to_boot_fails_clearly(tmp_path):
    r = env_for(tmp_path).run("sim", "bench", "--heapsize", "24k", "--seconds", "60")
    assert r.code == 1, r.output
    assert "MemoryError" in r.stdout
    # (the app module itself no longer fits: main.py says it cannot start and would reset in
    # 30 s, over and over; the sim stops there)
    assert ("error: the firmware cannot start (its output is above); it ran out of "
            "memory with a 24k heap (1 MemoryError above)") in r.stderr
