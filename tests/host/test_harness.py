"""The test harness itself: firmware tests really run in MicroPython, failures carry the
MicroPython traceback, the type check refuses APIs the ESP32 port lacks, the broker fixture
serves all four transports."""

import json
import shutil
import ssl
import subprocess
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tests.mpy_plugin import ROOT, _split, micropython_bin, micropython_env


def run_firmware_test(tmp_path: Path, source: str, *names: str) -> dict:
    (tmp_path / "test_probe.py").write_text(source)
    env = micropython_env(ROOT / "firmware")
    env["MICROPYPATH"] += ":" + str(tmp_path)
    res = subprocess.run(
        [micropython_bin(), str(ROOT / "tests/firmware/mptest.py"), "test_probe", *names],
        env=env, capture_output=True, text=True, timeout=60,
    )
    return _split(res.stdout, res.stderr, res.returncode, "")


def test_failing_firmware_assertion_reports_micropython_traceback(tmp_path):
    src = "import sys\ndef test_a():\n    assert sys.implementation.name == 'cpython', sys.implementation.name\n"
    status, text = run_firmware_test(tmp_path, src, "test_a")["test_a"]
    assert status == "FAIL"
    assert "AssertionError: micropython" in text
    assert 'test_probe.py", line 3, in test_a' in text


def test_async_test_is_awaited(tmp_path):
    src = "import asyncio\nhits = []\nasync def test_a():\n    await asyncio.sleep_ms(5)\n    raise ValueError('ran')\n"
    status, text = run_firmware_test(tmp_path, src, "test_a")["test_a"]
    assert status == "FAIL" and "ValueError: ran" in text


def test_process_crash_is_reported_not_lost(tmp_path):
    src = "import os\ndef test_a():\n    print('about to die')\n    os.system('kill -9 $PPID')\n"
    status, text = run_firmware_test(tmp_path, src, "test_a")["test_a"]
    assert status == "CRASH" and "about to die" in text


def _pyright(tmp_path: Path, code: str) -> subprocess.CompletedProcess:
    fw = tmp_path / "firmware"
    fw.mkdir()
    (fw / "probe.py").write_text(code)
    cfg = json.loads((ROOT / "pyrightconfig.json").read_text())
    cfg["typeshedPath"] = cfg["stubPath"] = str(ROOT / ".venv/mpstubs")
    (tmp_path / "pyrightconfig.json").write_text(json.dumps(cfg))
    exe = shutil.which("pyright", path=str(ROOT / ".venv/bin"))
    return subprocess.run([exe, "-p", str(tmp_path / "pyrightconfig.json")], capture_output=True, text=True,
                          cwd=tmp_path)


def test_type_check_refuses_api_missing_on_esp32(tmp_path):
    res = _pyright(tmp_path, "import socket\ns = socket.create_connection(('h', 1))\n")
    assert res.returncode != 0
    assert '"create_connection" is not a known attribute of module "socket"' in res.stdout


def test_type_check_accepts_esp32_api(tmp_path):
    res = _pyright(tmp_path, "import network, machine\nw = network.WLAN(network.STA_IF)\nmachine.reset()\n")
    assert res.returncode == 0, res.stdout


@pytest.mark.parametrize("scheme", ["mqtt", "mqtts", "ws", "wss"])
def test_broker_fixture_serves_each_transport(broker, scheme):
    transport = "websockets" if scheme.startswith("ws") else "tcp"
    got = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, transport=transport)
    if scheme in ("mqtts", "wss"):
        c.tls_set(ca_certs=str(broker.pki.ca_pem), cert_reqs=ssl.CERT_REQUIRED)
    if transport == "websockets":
        c.ws_set_options(path="/mqtt")
    c.on_message = lambda *a: got.set()
    c.on_connect = lambda cl, *a: cl.subscribe("t/x")
    c.on_subscribe = lambda cl, *a: cl.publish("t/x", b"hi", qos=1)
    c.connect("localhost", broker.ports[scheme])
    c.loop_start()
    try:
        assert got.wait(10), f"no round trip over {scheme}"
    finally:
        c.loop_stop()
        c.disconnect()


def test_broker_fixture_ca_refuses_other_ca(broker):
    ctx = ssl.create_default_context(cafile=str(broker.wrong_pki.ca_pem))
    import socket

    with socket.create_connection(("localhost", broker.ports["mqtts"])) as s:
        with pytest.raises(ssl.SSLCertVerificationError):
            ctx.wrap_socket(s, server_hostname="localhost")


def _thief(port):
    import socket as so

    t = so.socket()
    t.setsockopt(so.SOL_SOCKET, so.SO_REUSEADDR, 1)
    t.bind(("0.0.0.0", port))  # the websockets listeners bind every address
    t.listen()
    return t


@pytest.mark.parametrize("listener", ["mqtts", "wss"])
def test_broker_first_start_moves_off_a_port_someone_took(tmp_path, listener):
    import socket as so

    from tests.services import Mosquitto, mosquitto_bin

    if mosquitto_bin() is None:
        pytest.skip("mosquitto not installed")
    b = Mosquitto(tmp_path / "b")
    taken = b.ports[listener]
    thief = _thief(taken)
    try:
        b.start()
        assert b.ports[listener] != taken
        so.create_connection(("127.0.0.1", b.ports["mqtt"]), 2).close()
    finally:
        b.stop()
        thief.close()


def test_broker_restart_waits_for_its_own_port(tmp_path):
    import socket as so

    from tests.services import Mosquitto, mosquitto_bin

    if mosquitto_bin() is None:
        pytest.skip("mosquitto not installed")
    b = Mosquitto(tmp_path / "b").start()
    ports = dict(b.ports)
    b.kill()
    thief = _thief(ports["ws"])  # held briefly, as a dying process or a racing test would
    threading.Timer(0.8, thief.close).start()
    try:
        b.start()  # a restart keeps its ports: clients reconnect to them
        assert b.ports == ports
        so.create_connection(("127.0.0.1", ports["ws"]), 2).close()
    finally:
        b.stop()
        thief.close()
