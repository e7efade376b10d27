"""`uplink` on a real terminal (tmux: stdout and stderr are TTYs), where rich draws its live
progress bar. Tests that capture the output never see that path: there the bar is off."""

from __future__ import annotations

import re
import time

import pytest

from tests.host.terminal import Terminal
from tests.host.test_cli import host_fleet, subscribe
from tests.host.uplink_helpers import Env
from tests.virtual_board.launcher import VirtualBoard

FLEET = """
[devices.bench]
board = "host"
[devices.bench.platform]
kind = "thingsboard"
url = "mqtt://127.0.0.1:1"
token = "secret:tok"
"""
BAR = re.compile(r"━+.*?\d+(\.\d+)?/\d+(\.\d+)? kB")  # rich's BarColumn + DownloadColumn


@pytest.fixture
def term(tmp_path):
    t = Terminal(tmp_path / "term")
    yield t
    t.close()


@pytest.fixture
def vboard(tmp_path):
    vb = VirtualBoard(tmp_path / "board").start()
    yield vb
    vb.stop()


def env_for(tmp_path, text=FLEET) -> Env:
    env = Env(tmp_path / "fleet", text)
    env.env["UPLINK_SECRET_TOK"] = "tty-token-5512"
    return env


@pytest.mark.timeout(240)
def test_deploy_on_a_terminal_shows_progress_and_ends(tmp_path, vboard, term):
    env = env_for(tmp_path)
    term.start(["deploy", "bench", "--port", vboard.port], env.env, env.root)
    code = term.wait(180)
    out = term.output()
    assert code is not None, f"`uplink deploy` did not end; the screen:\n{term.screen()}"
    assert code == 0, out
    assert BAR.search(out), f"no progress bar was drawn:\n{out[-2000:]}"
    assert "bench: copied" in out and "board reset" in out
    assert (vboard.root / "uplink" / "app.mpy").exists()
    assert "tty-token-5512" not in out


@pytest.mark.timeout(240)
def test_deploy_with_nothing_to_copy_ends_on_a_terminal(tmp_path, vboard, term):
    env = env_for(tmp_path)
    assert env.run("-q", "deploy", "bench", "--port", vboard.port, "--no-reset").code == 0
    term.start(["deploy", "bench", "--port", vboard.port], env.env, env.root)
    code = term.wait(120)
    assert code is not None, f"`uplink deploy` did not end; the screen:\n{term.screen()}"
    assert code == 0, term.output()
    assert "bench: up to date (" in term.output() and "board not reset" in term.output()
    assert not BAR.search(term.output())  # nothing to copy: no bar


@pytest.mark.timeout(240)
def test_run_on_a_terminal_deploys_with_progress_then_follows_the_console(tmp_path, vboard, term):
    env = env_for(tmp_path)
    term.start(["run", "bench", "--port", vboard.port], env.env, env.root)
    assert term.wait_for_output("Ctrl-C to stop", 180), term.output()[-2000:]
    term.keys("C-c")
    code = term.wait(30)
    out = term.output()
    assert code is not None, f"`uplink run` did not stop at Ctrl-C; the screen:\n{term.screen()}"
    assert code == 0, out
    assert BAR.search(out), f"no progress bar was drawn:\n{out[-2000:]}"
    assert "valid" in out and "bench: copied" in out and "Traceback" not in out
    assert vboard.events()[-1] == "reset"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("stop", ["seconds", "ctrl-c"])
def test_sim_console_on_a_terminal(tmp_path, broker, term, stop):
    env = env_for(tmp_path, host_fleet(broker))
    got, c = subscribe(broker, "v1/devices/me/telemetry")
    try:
        if stop == "seconds":
            term.start(["sim", "bench", "--seconds", "8"], env.env, env.root)
        else:
            term.start(["sim", "bench"], env.env, env.root)
            assert term.wait_for_output("telemetry", 60) or got, term.output()[-2000:]
            # the console's "D pub" line is written as the reading is sent; it reaches the
            # broker a moment later (a Ctrl-C at once once stopped it on the way, twice)
            end = time.monotonic() + 30
            while not got and time.monotonic() < end:
                time.sleep(0.1)
            term.keys("C-c")
        code = term.wait(60)
    finally:
        c.loop_stop()
    out = term.output()
    assert code is not None, f"`uplink sim` did not end; the screen:\n{term.screen()}"
    assert code == 0, out
    assert "on the host board" in out and "Ctrl-C to stop" in out
    assert got, f"nothing reached the broker; the console:\n{out[-3000:]}"
    assert "D pub: v1/devices/me/telemetry" in out, out[-3000:]  # a line per message sent
    assert "Traceback" not in out and "tty-token-5512" not in out
    assert not (env.build / "sim" / "bench" / "crashes.json").exists()  # a stop is no crash
