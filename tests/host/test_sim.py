"""`uplink sim`: the ESP32-sized default heap, and a firmware that cannot run there (a crash
loop that ends in safe mode, a heap too small to import it) fails with the reason."""

from __future__ import annotations

import json

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


def sim_with_wifi(tmp_path, broker, fleet: str):
    """`uplink sim bench` for 8 s with a Wi-Fi network configured, as a real board has (the
    Wi-Fi manager loads): its result (exit code 0 asserted) and the telemetry the broker got."""
    env = env_for(tmp_path, '[defaults]\nwifi.networks = [{ ssid = "home", password = "secret:tok" }]\n'
                  + fleet)
    got, c = subscribe(broker, "v1/devices/me/telemetry")
    try:
        r = env.run("sim", "bench", "--seconds", "8")
    finally:
        c.loop_stop()
    assert r.code == 0, r.output
    return r, got


@pytest.mark.timeout(120)
def test_default_memory_is_the_boards_chip_and_the_firmware_publishes_in_it(tmp_path, broker):
    if not hostboard.esp32_model():
        pytest.skip(f"no ESP32 model: {hostboard.esp32_model_missing()}")
    # what a real board has: Wi-Fi networks (the Wi-Fi manager loads). Plain MQTT: over TLS the
    # esp32-devkitc's IDF heap is at its edge today (README, Memory; issue 23's open goal)
    r, got = sim_with_wifi(tmp_path, broker, host_fleet(broker, "esp32-devkitc"))
    # an esp32-devkitc: the ESP32's memory (-X chip=esp32), its IDF heap and the GC heap's growth
    assert "bench on the host board (compiled, the esp32's memory;" in r.stderr
    assert got and "MemoryError" not in r.stdout and "ENOMEM" not in r.stdout, r.output


@pytest.mark.timeout(120)
def test_a_romfs_device_runs_its_firmware_from_a_romfs_partition_over_tls(tmp_path, broker):
    # device.romfs: the sim writes the uplink/ package to a ROMFS partition beside the state
    # dir (-X romfs); an esp32-devkitc then has room for its TLS session with Wi-Fi configured
    if not hostboard.esp32_model():
        pytest.skip(f"no ESP32 model: {hostboard.esp32_model_missing()}")
    fleet = host_fleet(broker, "esp32-devkitc").replace(
        'board = "esp32-devkitc"', 'board = "esp32-devkitc"\nromfs = true').replace(
        f'url = "{broker.url("mqtt")}"', f'url = "{broker.url("mqtts")}"\nca = "{broker.pki.ca_pem}"')
    assert broker.url("mqtts") in fleet
    r, got = sim_with_wifi(tmp_path, broker, fleet)
    assert "the esp32's memory, firmware in ROMFS;" in r.stderr, r.stderr
    assert got and "ENOMEM" not in r.stdout and "not correctly signed" not in r.stdout, r.output
    assert "device.romfs is set, but" not in r.stdout  # the package did come from /rom


@pytest.mark.timeout(120)
def test_a_frozen_device_runs_from_the_filesystem_and_the_sim_says_so(tmp_path, broker):
    # the host board has no MicroPython image to freeze the package into: the sim says so once,
    # instead of the board warning at every boot that device.frozen is not honoured
    fleet = host_fleet(broker, "esp32-s3").replace('board = "esp32-s3"', 'board = "esp32-s3"\nfrozen = true')
    r, got = sim_with_wifi(tmp_path, broker, fleet)
    assert "device.frozen: the host board runs the firmware from its filesystem" in r.stderr, r.stderr
    assert got and "device.frozen is set" not in r.stdout, r.output


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


# -- a first run: no broker, the user's readings, a command, one simulation at a time ----------
LOCAL = """
[devices.demo]
board = "host"
[devices.demo.platform]
kind = "thingsboard"
url = "mqtt://127.0.0.1:{port}"
credentials = {{ username = "demo" }}
client_rpc = false
[devices.demo.telemetry]
interval_s = 1
"""


class SimProcess:
    """`uplink sim demo` as a person runs it (its own process), its output read as it comes."""

    def __init__(self, env: Env, *args: str, shell_tail: str = ""):
        import os
        import shlex
        import subprocess
        import sys
        import threading

        argv = [sys.executable, "-m", "host_tools", "sim", "demo", *args]
        if shell_tail:  # a pipeline: bash runs it, self.proc is bash
            argv = ["bash", "-c", shlex.join(argv) + shell_tail]
        self.proc = subprocess.Popen(argv, cwd=env.root, env={**os.environ, **env.env},
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self.changed = threading.Condition()
        for stream, into in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._read, args=(stream, into), daemon=True).start()

    def _read(self, stream, into):
        for line in stream:
            with self.changed:
                into.append(line)
                self.changed.notify_all()

    def text(self) -> str:
        return "".join(self.err) + "".join(self.out)

    def wait_for(self, check, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: check(self.text()), timeout)

    def stop(self):
        import os
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            self.proc.wait(30)


def firmware_in(state) -> list[int]:
    """The pids of processes whose working directory is the simulation's state directory."""
    import os

    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.readlink(f"/proc/{d}/cwd") == str(state):
                    pids.append(int(d))
            except OSError:
                pass
    return pids


def local_env(tmp_path):
    from host_tools.local_broker import free_port

    port = free_port()
    return Env(tmp_path, LOCAL.format(port=port)), port


@pytest.mark.timeout(180)
def test_with_no_broker_sim_starts_one_shows_the_readings_and_takes_a_command(tmp_path):
    import re

    env, port = local_env(tmp_path)
    sim = SimProcess(env, "--seconds", "120")
    try:
        assert sim.wait_for(lambda t: re.search(r"D read: .*temperature=2\d", t), 90), sim.text()
        out = sim.text()
        assert f"nothing listened on 127.0.0.1:{port}: started a local MQTT broker there" in out
        assert "ECONNREFUSED" not in out
        hint = "send it a command from another terminal: uplink sim demo --send setLed '{\"on\": true}'"
        assert hint in out, out
        assert f"mosquitto_pub -h 127.0.0.1 -p {port} -t v1/devices/me/rpc/request/1" in out
        # as the hint says, from another terminal: the board's handle() answers
        r = env.run("sim", "demo", "--send", "setLed", '{"on": true}')
        assert r.code == 0, r.output
        assert json.loads(r.stdout) == {"led": True}
        assert sim.wait_for(lambda t: 'D cmd: setLed {"on":true} -> {"led":true}' in t, 30), sim.text()
        assert sim.wait_for(lambda t: re.search(r"D read: .*led=true", t), 30), sim.text()
    finally:
        sim.stop()


@pytest.mark.timeout(180)
def test_a_second_sim_of_the_device_is_refused_while_the_first_runs(tmp_path):
    env, _ = local_env(tmp_path)
    sim = SimProcess(env, "--seconds", "120")
    try:
        assert sim.wait_for(lambda t: "D read: " in t, 90), sim.text()
        r = env.run("sim", "demo", "--seconds", "5")
        assert r.code == 5, r.output
        assert "error: demo is already running in another `uplink sim` (pid " in r.stderr
        assert "stop that one first (Ctrl-C), or send it a command with `uplink sim demo --send CMD JSON`" in r.stderr
        assert "D read:" not in r.stdout
    finally:
        sim.stop()
    r = env.run("sim", "demo", "--seconds", "1")  # the first one gone: the next starts
    assert r.code == 0, r.output


def _ends_with_its_firmware(env, sim, timeout=20):
    import time

    state = env.build / "sim" / "demo"
    deadline = time.monotonic() + timeout
    while firmware_in(state) and time.monotonic() < deadline:
        time.sleep(0.1)
    return firmware_in(state)


@pytest.mark.timeout(180)
def test_sim_piped_into_head_leaves_no_firmware_behind(tmp_path):
    env, _ = local_env(tmp_path)
    sim = SimProcess(env, "--seconds", "120", shell_tail=" | head -4")
    assert sim.proc.wait(120) == 0, sim.text()
    assert len(sim.out) == 4, sim.text()
    assert not _ends_with_its_firmware(env, sim), sim.text()
    assert "Traceback" not in sim.text()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("sig", ["SIGKILL", "SIGHUP"])
def test_sim_killed_or_hung_up_takes_its_firmware_along(tmp_path, sig):
    import os
    import signal
    import time

    from host_tools.local_broker import listening

    env, port = local_env(tmp_path)
    sim = SimProcess(env, "--seconds", "120")
    try:
        assert sim.wait_for(lambda t: "D read: " in t, 90), sim.text()
        assert firmware_in(env.build / "sim" / "demo") and listening("127.0.0.1", port)
        # uplink alone, not its process group: the firmware must follow on its own
        os.kill(sim.proc.pid, getattr(signal, sig))
        sim.proc.wait(30)
        assert not _ends_with_its_firmware(env, sim), sim.text()
        deadline = time.monotonic() + 20  # and the broker it started
        while listening("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not listening("127.0.0.1", port)
    finally:
        sim.stop()


BUGGY_USER_PY = '''def _dht():
    return {}["dht22"]


def read():
    return {"temperature": _dht()}
'''


@pytest.mark.timeout(180)
def test_an_error_in_user_py_names_its_file_and_line_once(tmp_path):
    env, _ = local_env(tmp_path)
    (tmp_path / "user.py").write_text(BUGGY_USER_PY)
    sim = SimProcess(env, "--seconds", "120")
    try:
        assert sim.wait_for(lambda t: t.count("D read: (no values)") >= 4, 90), sim.text()
    finally:
        sim.stop()
    out = sim.text()
    errors = [ln for ln in out.splitlines() if "E user:" in ln]
    assert errors[0].endswith("E user: read() failed: KeyError: dht22 (at user.py:6 in read > user.py:2 in _dht)"), out
    assert len(errors) == 1 or errors[1].endswith("(10 times so far)"), errors


@pytest.mark.timeout(180)
def test_without_mosquitto_the_broker_is_amqtt_and_it_goes_with_sim(tmp_path, monkeypatch):
    from host_tools import local_broker

    monkeypatch.setattr(local_broker, "_mosquitto", lambda: None)  # a machine without mosquitto
    env, port = local_env(tmp_path)
    r = env.run("sim", "demo", "--seconds", "6")
    assert r.code == 0, r.output
    assert f"nothing listened on 127.0.0.1:{port}: started a local MQTT broker there (amqtt)" in r.stderr
    assert "D read: " in r.stdout and "ECONNREFUSED" not in r.stdout and "Traceback" not in r.output, r.output
    assert not local_broker.listening("127.0.0.1", port)  # stopped with sim, even in this process


@pytest.mark.timeout(180)
def test_closing_the_terminal_takes_sim_and_its_firmware_along(tmp_path):
    import os
    import time

    from tests.host.terminal import Terminal

    env, _ = local_env(tmp_path)
    term = Terminal(tmp_path / "term").start(["sim", "demo", "--seconds", "120"], env.env, tmp_path)
    try:
        assert term.wait_for_output(" I boot: ", 90), term.output()
        state = env.build / "sim" / "demo"
        assert firmware_in(state)
        uplink = int((state / "sim.lock").read_text())
        term.tmux("kill-session", "-t", "t")  # the window closed: SIGHUP to what runs in it
        deadline = time.monotonic() + 20
        while (firmware_in(state) or os.path.exists(f"/proc/{uplink}")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not firmware_in(state) and not os.path.exists(f"/proc/{uplink}"), term.output()[-2000:]
    finally:
        term.close()
    r = env.run("sim", "demo", "--seconds", "1")  # and the next sim starts
    assert r.code == 0, r.output


def test_send_says_what_is_wrong_when_it_cannot_send(tmp_path):
    env, port = local_env(tmp_path)
    r = env.run("sim", "demo", "--send", "setLed", "{on: true}")
    assert r.code == 2, r.output
    assert "error: --send setLed JSON: not JSON (" in r.stderr and "--send setLed '{\"on\": true}'" in r.stderr
    r = env.run("sim", "demo", "--send", "setLed", '{"on": true}')  # no sim, no broker
    assert r.code == 5, r.output
    assert f"error: no broker at 127.0.0.1:{port} (" in r.stderr and "is `uplink sim` running?" in r.stderr
    env.write_fleet(LOCAL.format(port=port).replace("mqtt://127.0.0.1", "mqtt://tb.example.com"))
    r = env.run("sim", "demo", "--send", "setLed", "{}")
    assert r.code == 5, r.output
    assert "--send talks to a simulated ThingsBoard device on a local broker" in r.stderr
