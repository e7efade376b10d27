"""docs/hardware.md's session: `uplink logs` open in one terminal the whole time, while deploy,
run and repl in another take the port from it and give it back (host_tools/port_share.py)."""

from __future__ import annotations

import threading
import time

import pytest

from tests.host.terminal import Terminal
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


class App:
    """The board's app printing a line now and then, as a console shows it."""

    def __init__(self, vb: VirtualBoard):
        self.vb, self.line, self.stop = vb, b"", threading.Event()
        self.lock = threading.Lock()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self.stop.wait(0.2):
            with self.lock:
                if self.line:
                    self.vb.emit(self.line)

    def says(self, text: str) -> None:
        with self.lock:
            self.line = text.encode() + b"\r\n"

    def quiet(self) -> None:
        """Nothing more from the app (the deploy's hold stops it on a real board)."""
        with self.lock:
            self.line = b""


def until(cond, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        time.sleep(0.1)
    return cond()


@pytest.mark.timeout(300)
def test_logs_lends_the_port_to_deploy_run_and_repl(tmp_path, monkeypatch):
    env = Env(tmp_path / "fleet", FLEET)
    env.env["UPLINK_SECRET_TOK"] = "tty-token-5512"
    env.env["XDG_RUNTIME_DIR"] = str(tmp_path / "run")  # where logs listens
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    vb = VirtualBoard(tmp_path / "board").start()
    app = App(vb)
    logs, repl = Terminal(tmp_path / "t1"), Terminal(tmp_path / "t2")
    try:
        logs.start(["logs", "--port", vb.port], env.env, env.root)
        app.says("app: reading 1")
        assert logs.wait_for_output("app: reading 1", 60), logs.screen()
        app.quiet()

        r = env.run("deploy", "bench", "--port", vb.port)  # in the other terminal
        assert r.code == 0, r.output
        assert "bench: copied" in r.stderr and (vb.root / "main.py").exists()
        assert logs.wait_for_output(f"-- uplink deploy has {vb.port}; the console goes on when it is done --", 10)
        assert logs.wait_for_output("-- console back --", 30), logs.screen()
        app.says("app: reading 2")
        assert logs.wait_for_output("app: reading 2", 30), logs.screen()
        app.quiet()

        r = env.run("run", "bench", "--port", vb.port)
        assert r.code == 0, r.output
        assert "the console goes on in the terminal running `uplink logs`" in r.stderr
        assert logs.wait_for_output("-- uplink run has", 10)

        repl.start(["repl", "--port", vb.port], env.env, env.root)
        assert repl.wait_for_output("Ctrl-] leaves", 60), repl.screen()
        assert repl.wait_for_output("Use Ctrl-] or Ctrl-x to exit this shell", 60), repl.screen()
        assert logs.wait_for_output("-- uplink repl has", 30), logs.screen()
        repl.keys("C-c")
        repl.keys("6*7", "Enter")
        assert repl.wait_for_output("42", 30), repl.screen()
        repl.keys("C-]")
        assert repl.wait(30) == 0, repl.screen()
        assert until(lambda: logs.output().count("-- console back --") == 3), logs.screen()
        app.says("app: reading 3")
        assert logs.wait_for_output("app: reading 3", 30), logs.screen()

        logs.keys("C-c")
        assert logs.wait(30) == 0, logs.screen()
        assert "busy" not in logs.output() + repl.output()
    finally:
        app.stop.set()
        logs.close()
        repl.close()
        vb.stop()


@pytest.mark.timeout(300)
def test_logs_follows_an_s3_through_a_deploy_that_moves_its_port(tmp_path, monkeypatch):
    """An S3 on its own USB: the deploy borrows the port, the board's resets move it twice,
    and the console comes back on the new name by itself."""
    from host_tools import ports
    from tests.host import fake_ports
    from tests.host.test_deploy_virtual_board import S3_USB
    from tests.host.uplink_helpers import REPO

    vb = VirtualBoard(tmp_path / "s3", usb=S3_USB).start()
    env = Env(tmp_path / "fleet", FLEET)
    env.env.update({"UPLINK_SECRET_TOK": "tty-token-5512", "XDG_RUNTIME_DIR": str(tmp_path / "run"),
                    "UPLINK_TEST_PORTS": str(vb.ports_file), "PYTHONPATH": str(REPO)})
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("UPLINK_TEST_PORTS", str(vb.ports_file))
    monkeypatch.setattr(ports, "comports", fake_ports.comports)
    app = App(vb)
    logs = Terminal(tmp_path / "t1")
    try:
        logs.start(["logs"], env.env, env.root, module="tests.host.fake_ports")  # the port found by itself
        app.says("app: reading 1")
        assert logs.wait_for_output("app: reading 1", 60), logs.screen()
        app.quiet()
        first = vb.port
        r = env.run("deploy", "bench")
        assert r.code == 0, r.output
        assert until(lambda: vb.reenumerations == 2) and vb.port != first
        assert logs.wait_for_output(f"console of {vb.port} (the board came back under another name)", 30), \
            logs.screen()
        app.says("app: reading 2")
        assert logs.wait_for_output("app: reading 2", 30), logs.screen()
        app.quiet()
        r = env.run("deploy", "bench", "--no-reset")  # logs listens under the new name
        assert r.code == 0 and "busy" not in r.stderr, r.output
        logs.keys("C-c")
        assert logs.wait(30) == 0, logs.screen()
    finally:
        app.stop.set()
        logs.close()
        vb.stop()


def test_a_runtime_dir_others_can_write_is_not_used(tmp_path, monkeypatch):
    """The socket's directory must be this user's alone: in one that others can write, a
    stranger's socket could answer for logs (or take the port from it)."""
    from host_tools import port_share

    run = tmp_path / "run"
    (run / "uplink").mkdir(parents=True)
    (run / "uplink").chmod(0o777)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    lender = port_share.Lender("/dev/ttyUSB0")
    assert lender.sock is None and "not a private directory" in lender.problem
    with port_share.borrowed("/dev/ttyUSB0", "uplink deploy") as lent:
        assert lent is False
    (run / "uplink").chmod(0o700)
    lender = port_share.Lender("/dev/ttyUSB0")
    try:
        assert lender.sock is not None and not lender.problem
        assert (run / "uplink" / "dev_ttyUSB0.sock").exists()
    finally:
        lender.close()
    assert not (run / "uplink" / "dev_ttyUSB0.sock").exists()


@pytest.mark.timeout(300)
def test_repl_goes_on_after_an_s3_reset_takes_its_port(tmp_path):
    """Ctrl-C at the REPL resets a board whose watchdog is armed; an S3 takes its USB port
    along and comes back under another name: the REPL continues there."""
    from tests.host.test_deploy_virtual_board import S3_USB
    from tests.host.uplink_helpers import REPO

    vb = VirtualBoard(tmp_path / "s3", usb=S3_USB).start()
    env = Env(tmp_path / "fleet", FLEET)
    env.env.update({"XDG_RUNTIME_DIR": str(tmp_path / "run"), "UPLINK_TEST_PORTS": str(vb.ports_file),
                    "PYTHONPATH": str(REPO)})
    term = Terminal(tmp_path / "t")
    try:
        first = vb.port
        term.start(["repl"], env.env, env.root, module="tests.host.fake_ports")
        assert term.wait_for_output("Use Ctrl-] or Ctrl-x to exit this shell", 60), term.screen()
        term.keys("import machine", "Enter")
        term.keys("machine.reset()", "Enter")
        assert term.wait_for_output("the board reset and took its USB port along", 30), term.screen()
        assert until(lambda: vb.reenumerations == 1) and vb.port != first
        assert term.wait_for_output(f"REPL of {vb.port} (mpremote)", 30), term.screen()
        assert until(lambda: term.output().count("Use Ctrl-] or Ctrl-x to exit this shell") == 2), term.screen()
        term.keys("6*7", "Enter")
        assert term.wait_for_output("42", 30), term.screen()
        term.keys("C-]")
        assert term.wait(30) == 0, term.screen()
    finally:
        term.close()
        vb.stop()
