"""Words a person reads: singular counts, no "in the /path", a version that is MicroPython's,
and the demo's board lines still marked as the board's when the terminal wraps them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from host_tools import hostboard
from tests.host.terminal import Terminal
from tests.host.uplink_helpers import Env
from tests.services import mosquitto_bin

ROOT = Path(__file__).resolve().parents[2]


def test_secrets_set_names_the_file_without_an_article(tmp_path):
    env = Env(tmp_path)
    r = env.run("secrets", "set", "wifi_home", input="hunter22\n")
    assert r.code == 0, r.output
    assert f"stored 'wifi_home' in {env.secrets_file} (0600)" in r.stderr, r.stderr
    assert "in the /" not in r.stderr


def test_setup_says_which_micropython_the_model_is_not_a_python_version():
    if not hostboard.esp32_model():
        pytest.skip(f"no ESP32 model: {hostboard.esp32_model_missing()}")
    # the last line of tools/setup.sh, run as setup runs it
    line = next(ln for ln in (ROOT / "tools" / "setup.sh").read_text().splitlines()
                if "setup: done (firmware is proven" in ln)
    out = subprocess.run(["bash", "-c", line.strip()], cwd=ROOT, capture_output=True, text=True,
                         env={"VENV": ".venv", "PATH": "/usr/bin:/bin"}).stdout
    assert out.startswith("setup: done (firmware is proven on the ESP32 model: MicroPython v1."), out
    assert "3.4.0" not in out


@pytest.mark.timeout(120)
@pytest.mark.skipif(mosquitto_bin() is None, reason="mosquitto not installed")
def test_demo_lines_wrapped_by_the_terminal_stay_the_boards(tmp_path):
    term = Terminal(tmp_path / "term", width=80, height=50).start(
        ["--seconds", "8", "--interval", "1"], {"TERM": "xterm"}, tmp_path, module="host_tools.demo")
    try:
        assert term.wait(90) == 0, term.output()
        screen = term.tmux("capture-pane", "-p", "-t", "t", "-S", "-200").splitlines()
    finally:
        term.close()
    pubs = [i for i, ln in enumerate(screen) if "D pub: v1/devices/me/telemetry" in ln]
    assert pubs, "\n".join(screen)
    for i in pubs:  # a pub: line is longer than 80 columns: its rest is on the next line
        assert screen[i].startswith("board | "), screen[i]
        assert re.match(r" {8}\S", screen[i + 1]), "\n".join(screen[i - 1:i + 3])


def test_setup_leaves_a_system_mosquitto_alone():
    # `apt install mosquitto` gives the user a broker on 1883 that `uplink sim local-demo`
    # uses; the tests start their own on free ports and need it stopped by nobody
    setup = (ROOT / "tools" / "setup.sh").read_text()
    assert not re.search(r"systemctl\s+(disable|stop)|service\s+mosquitto\s+stop|pkill", setup), setup
