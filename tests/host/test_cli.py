"""The `uplink` command's surface: --help everywhere, python -m host_tools, exit codes,
devices, sim and run."""

from __future__ import annotations

import json
import threading
import time

import pytest
import typer.main

from host_tools.cli import app
from tests.host.uplink_helpers import Env
from tests.virtual_board.launcher import VirtualBoard


def all_command_paths() -> list[list[str]]:
    root = typer.main.get_command(app)
    out: list[list[str]] = []

    def walk(cmd, path):
        out.append(path)
        if getattr(cmd, "commands", None):  # a group (typer may vendor its own click)
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])

    walk(root, [])
    return out


def test_help_everywhere(tmp_path):
    env = Env(tmp_path)
    paths = all_command_paths()
    names = {" ".join(p) for p in paths}
    for expected in ("validate", "config show", "secrets set", "secrets list", "secrets rm", "provision",
                     "build", "deploy", "flash-micropython", "devices", "logs", "repl", "run", "sim"):
        assert expected in names
    for p in paths:
        r = env.run(*p, "--help")
        assert r.code == 0, (p, r.output)
        assert "Usage:" in r.stdout


def test_python_dash_m_and_version(tmp_path):
    env = Env(tmp_path)
    r = env.run_process("--help")
    assert r.code == 0 and "deploy" in r.stdout
    r = env.run_process("--version")
    assert r.code == 0 and r.stdout.startswith("uplink ")


def test_exit_codes(tmp_path):
    env = Env(tmp_path, '[devices.greenhouse.platform]\nkind = "blynk"\ntoken = "secret:t"\n')
    assert env.run("deploy").code == 2  # usage
    r = env.run("provision", "grenhouse")
    assert r.code == 3 and "no device 'grenhouse' (did you mean 'greenhouse'?)" in r.stderr
    assert env.run("provision", "greenhouse").code == 4  # secret t not set
    assert env.run("provision", "greenhouse", env={"UPLINK_SECRET_T": "x"}).code == 0
    r = env.run("--fleet", str(tmp_path / "missing.toml"), "validate")
    assert r.code == 3 and "no fleet file" in r.stderr


def test_quiet_and_verbose(tmp_path):
    env = Env(tmp_path, '[devices.d.platform]\nkind = "blynk"\ntoken = "secret:t"\n')
    env.env["UPLINK_SECRET_T"] = "x"
    assert env.run("-q", "validate").output == ""
    assert "fleet.toml: 1 device OK: d" in env.run("validate").stderr
    r = env.run("-v", "validate")
    assert "no OS keyring (disabled)" in r.stderr  # -v says where secrets come from
    assert "no OS keyring" not in env.run("validate").stderr


def test_devices_lists_ports(monkeypatch, tmp_path):
    from serial.tools import list_ports_common

    p = list_ports_common.ListPortInfo("/dev/ttyACM0")
    p.vid, p.pid, p.serial_number, p.product = 0x303A, 0x1001, "F4:12:FA:00:11:22", "USB JTAG/serial debug unit"
    q = list_ports_common.ListPortInfo("/dev/ttyS0")
    monkeypatch.setattr("serial.tools.list_ports.comports", lambda: [q, p])
    r = Env(tmp_path).run("devices", "--json")
    assert r.code == 0
    rows = json.loads(r.stdout)
    assert rows[0] == {"port": "/dev/ttyACM0", "serial_number": "F4:12:FA:00:11:22", "vid_pid": "303a:1001",
                       "product": "USB JTAG/serial debug unit", "likely_board": True}
    assert rows[1]["port"] == "/dev/ttyS0" and rows[1]["vid_pid"] is None
    from host_tools.ports import pick_port

    assert pick_port() == "/dev/ttyACM0"
    r = Env(tmp_path).run("devices")
    assert "303a:1001" in r.stdout and "F4:12:FA:00:11:22" in r.stdout


def host_fleet(broker, board="host") -> str:
    return f"""
[devices.bench]
board = "{board}"
[devices.bench.platform]
kind = "thingsboard"
url = "{broker.url('mqtt')}"
token = "secret:tok"

[devices.bench.telemetry]
interval_s = 1
"""


def subscribe(broker, topic):
    import paho.mqtt.client as mqtt

    got: list = []
    ready = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_connect = lambda c, *a: c.subscribe(topic)
    c.on_subscribe = lambda *a: ready.set()
    c.on_message = lambda c, u, m: got.append(m.payload)
    c.connect("127.0.0.1", broker.ports["mqtt"])
    c.loop_start()
    assert ready.wait(10)
    return got, c


@pytest.mark.parametrize("board", ["host", "esp32-devkitc"])
def test_sim_publishes_to_the_configured_broker(tmp_path, broker, board):
    env = Env(tmp_path, host_fleet(broker, board))
    env.env["UPLINK_SECRET_TOK"] = "sim-token"
    got, c = subscribe(broker, "v1/devices/me/telemetry")
    try:
        r = env.run("sim", "bench", "--seconds", "6")
    finally:
        c.loop_stop()
    assert r.code == 0, r.output
    assert got, r.output
    assert not (env.build / "sim" / "bench" / "crashes.json").exists()  # a stop is no crash
    # the bundle itself still says what the real board is
    assert json.loads((env.build / "devices" / "bench" / "config.json").read_text())["device"]["board"] == board


@pytest.mark.timeout(120)
def test_run_validates_provisions_builds_deploys_and_follows_logs(tmp_path, broker):
    env = Env(tmp_path / "fleet", host_fleet(broker))
    env.env["UPLINK_SECRET_TOK"] = "run-token"
    vb = VirtualBoard(tmp_path / "board").start()
    try:
        t = time.monotonic()
        r = env.run("run", "bench", "--port", vb.port, "--seconds", "1")
        assert time.monotonic() - t < 90
    finally:
        vb.stop()
    assert r.code == 0, r.output
    assert "valid" in r.stderr and "copied" in r.stderr and "console of" in r.stderr
    assert (vb.root / "config.json").exists() and (vb.root / "uplink" / "app.mpy").exists()
    assert vb.events()[-1] == "reset"


def test_logs_prints_the_console(tmp_path):
    import os
    import pty
    import tty

    master, slave = pty.openpty()
    tty.setraw(slave)
    port = os.ttyname(slave)
    t = threading.Timer(0.5, lambda: os.write(master, b"     5 I boot: uplink 0.1.0 on esp32\r\n"))
    t.start()
    try:
        r = Env(tmp_path).run("logs", "--port", port, "--seconds", "1.5")
    finally:
        t.join()
        os.close(master)
        os.close(slave)
    assert r.code == 0, r.output
    assert "I boot: uplink 0.1.0 on esp32\n" in r.stdout


def test_help_shows_no_value_for_flags_and_keeps_brackets(tmp_path):
    env = Env(tmp_path)
    for p in all_command_paths():
        out = env.run(*p, "--help").stdout
        assert "<bool>" not in out, (p, out)
    assert "<int>" not in env.run("--help").stdout.split("--verbose")[1].split("\n")[0]  # -v -v
    assert "HOST:PORT to listen on (default: [relay] listen)." in env.run("relay", "--help").stdout
    # rich reads "[word]" in help text as markup and drops it: every "[" must be escaped
    root = typer.main.get_command(app)

    def texts(cmd):
        yield cmd.help or ""
        for prm in cmd.params:
            yield getattr(prm, "help", None) or ""
        for sub in getattr(cmd, "commands", {}).values():
            yield from texts(sub)

    import re

    assert [t for t in texts(root) if re.search(r"(?<!\\)\[[a-z]", t)] == []


# the codes scripts rely on: written out here so that changing one in errors.py fails a test
EXIT_HELP = ("Exit codes: 0 ok, 1 failure, 2 bad usage, 3 invalid fleet file (or unknown device or "
             "board), 4 a secret is missing, 5 board or port problem, 6 build failure (mpy-cross), "
             "7 cloud provisioning or token refused or unreachable.")


def test_help_lists_the_exit_codes(tmp_path):
    from host_tools import errors

    assert errors.help_text() == EXIT_HELP
    out = " ".join(Env(tmp_path).run("--help").stdout.replace("│", " ").split())
    assert EXIT_HELP in out


def test_the_docs_table_of_exit_codes_is_the_codes():
    from host_tools import errors
    from tests.host.uplink_helpers import REPO

    doc = (REPO / "docs" / "host_tools.md").read_text()
    table = doc.split("<!-- exit codes:", 1)[1].split("-->", 1)[1].split("<!-- end of exit codes -->")[0]
    assert table.strip() == errors.markdown(), (
        "docs/host_tools.md: the exit code table differs from host_tools/errors.py; it should read\n"
        + errors.markdown())


def test_each_error_type_carries_its_exit_code():
    from host_tools.board_link import BoardError, BoardExecError
    from host_tools.build import BuildError
    from host_tools.errors import UplinkError, UsageError
    from host_tools.flash import FlashError
    from host_tools.fleet import FleetError
    from host_tools.oidc import TokenError
    from host_tools.ota_bundle import BundleError
    from host_tools.project import ProjectError
    from host_tools.provision import ProvisionError
    from host_tools.secrets import MissingSecret, SecretError
    from host_tools.tb_register import RegisterError

    codes = {UplinkError: 1, ProvisionError: 1, FlashError: 1, ProjectError: 1, UsageError: 2,
             FleetError: 3, SecretError: 4, MissingSecret: 4, BoardError: 5, BoardExecError: 5,
             BuildError: 6, BundleError: 6, RegisterError: 7, TokenError: 7}
    assert {cls: cls.code for cls in codes} == codes


def test_logs_takes_the_device(tmp_path):
    import os
    import pty
    import tty

    env = Env(tmp_path, '[devices.gh]\nboard = "esp32-devkitc"\n[devices.gh.platform]\nkind = "blynk"\n'
                        'token = "secret:t"\n[devices.sim1.platform]\nkind = "blynk"\ntoken = "secret:t"\n')
    r = env.run("logs", "gg", "--seconds", "0.1")
    assert r.code == 3 and "no device 'gg' (did you mean 'gh'?)" in r.stderr
    r = env.run("logs", "sim1")
    assert r.code == 2 and "error: 'sim1' is a host-board device: its log is `uplink sim sim1`" in r.stderr
    master, slave = pty.openpty()
    tty.setraw(slave)
    port = os.ttyname(slave)
    stop = threading.Event()

    def board():  # says its line until told to stop: opening the port drops what came before
        while not stop.wait(0.2):
            os.write(master, b"     5 I boot: uplink 0.1.0 on esp32\r\n")

    t = threading.Thread(target=board)
    t.start()
    try:
        r = env.run("logs", "gh", "--port", port, "--seconds", "1")
    finally:
        stop.set()
        t.join()
        os.close(master)
        os.close(slave)
    assert r.code == 0, r.output
    assert f"console of gh on {port} (115200 baud)" in r.stderr
    assert "I boot: uplink 0.1.0 on esp32\n" in r.stdout
