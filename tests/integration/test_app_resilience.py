"""The whole firmware on the host board (the ESP32 model at 128k) when things go wrong inside
it: a MemoryError in any long-lived task costs at most a reading, Ctrl-C and a stuck board's
reset keep the readings held in RAM, and a task that keeps failing ends in the crash path."""

from __future__ import annotations

import json
import signal
import textwrap
import time

import pytest

from host_tools import hostboard
from tests.integration.hostboard import HostBoard
from tests.integration.test_app_e2e import Cloud, tb_config
from tests.integration.test_outbox_sigkill import DUMP
from tests.mpy_plugin import micropython_bin, micropython_env
from tests.services import free_port, mosquitto_bin

pytestmark = pytest.mark.skipif(mosquitto_bin() is None, reason="mosquitto not installed")

# user.py that breaks each long-lived task once, the way a fragmented heap would: the
# telemetry wait and body, the command task, the publisher, a round of the supervisor
INJECT = textwrap.dedent(
    """
    import asyncio
    import sys

    from uplink import commands, outbox, publisher
    _n = [0]


    def read():
        _n[0] += 1
        if _n[0] == 3:
            raise MemoryError("injected: read")
        return {"seq": _n[0]}


    def handle(cmd):
        return {"echo": cmd.params}


    _wait_for = asyncio.wait_for
    _waits = [0]


    def wait_for(aw, timeout):
        _waits[0] += 1
        if _waits[0] == 6:
            raise MemoryError("injected: telemetry wait")
        return _wait_for(aw, timeout)


    asyncio.wait_for = wait_for


    def once(cls, name, why):
        orig = getattr(cls, name)
        calls = [0]

        async def broken(self):
            calls[0] += 1
            if calls[0] == 1:
                await asyncio.sleep_ms(300)
                raise MemoryError("injected: " + why)
            await orig(self)

        setattr(cls, name, broken)


    once(commands.Commands, "run", "commands")
    once(publisher.Publisher, "run", "publish")
    _flush = outbox.Outbox.flush
    _flushes = [0]


    def flush(self):
        _flushes[0] += 1
        if _flushes[0] == 2:
            raise MemoryError("injected: supervise")
        _flush(self)


    outbox.Outbox.flush = flush
    """
)


def delivered(cloud) -> list[int]:
    # (the reading whose read() failed went out without values: no seq)
    return [r["values"]["seq"] for r in cloud.readings() if "seq" in r["values"]]


def test_a_memory_error_in_any_task_costs_at_most_a_reading(broker, tmp_path):
    cloud = Cloud(broker.ports["mqtt"], ["v1/devices/me/rpc/response/+", "v1/devices/me/telemetry"])
    cfg = tb_config(broker.ports["mqtt"], interval_ms=200)
    cfg["platform"]["client_rpc"] = False
    board = HostBoard(tmp_path / "board", cfg, user_py=INJECT).start()
    try:
        for what in ("telemetry wait", "commands", "publish", "supervise"):
            board.wait_for_line(f"injected: {what}", timeout=30)
        # every task is back: readings keep arriving, and a command is answered
        n = max(delivered(cloud) or [0])
        assert cloud.wait(lambda: max(delivered(cloud) or [0]) > n + 10), board.console()
        cloud.c.publish("v1/devices/me/rpc/request/7", json.dumps({"method": "echo", "params": {"x": 7}}), qos=1)
        assert cloud.wait(lambda: any(t.endswith("/response/7") for t, _ in cloud.msgs)), board.console()
        got = set(delivered(cloud))
        top = max(got)
        # the reading whose read() failed (3) is the only one that never existed
        assert sorted(set(range(1, top + 1)) - got) == [3], board.console()
        assert board.proc.poll() is None, board.console()
        assert "app crashed" not in board.console()
        for task in ("telemetry", "commands", "publish"):
            assert f"E {task}: task failed (1 in a row); restarting it: MemoryError" in board.console(), task
    finally:
        board.stop()
        cloud.close()


def test_a_task_that_keeps_failing_ends_in_the_crash_path(tmp_path):
    user = textwrap.dedent(
        """
        from uplink import telemetry

        async def broken(self):
            raise MemoryError("injected: always")

        telemetry.Telemetry.run = broken
        """
    )
    cfg = tb_config(free_port())  # nothing listens: the cloud plays no part here
    board = HostBoard(tmp_path / "board", cfg, user_py=user).start()
    try:
        line = board.wait_for_line("app crashed", timeout=30)
        assert "task telemetry failed 5 times in a row" in line, board.console()
        board.proc.wait(10)
        assert hostboard.restarts(board.proc.returncode), board.console()
    finally:
        board.stop()


SEQ_FILE_USER = textwrap.dedent(
    """
    _n = [0]

    def read():
        _n[0] += 1
        with open("last_seq", "w") as f:
            f.write(str(_n[0]))
        return {"seq": _n[0]}
    """
)

def stored_seqs(state) -> list[int]:
    import subprocess

    from tests.mpy_plugin import compile_firmware

    fw = compile_firmware(state.parent / "dump")
    out = subprocess.run([micropython_bin(), "-c", DUMP], cwd=state, env=micropython_env(fw),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # DUMP prints "R <id> <record>" per record on flash
    return [json.loads(line.split(" ", 2)[2])["values"]["seq"] for line in out.stdout.splitlines()
            if line.startswith("R ")]


def test_ctrl_c_writes_the_held_readings_to_flash_first(tmp_path):
    # nothing listens for MQTT: every reading stays in the outbox, the latest held in RAM
    # (hold_ms) until Ctrl-C writes them
    cfg = tb_config(free_port(), interval_ms=50)
    cfg["outbox"]["hold_ms"] = 5000
    board = HostBoard(tmp_path / "board", cfg, user_py=SEQ_FILE_USER).start()
    try:
        board.wait_for_line("W mqtt", timeout=20)
        time.sleep(2)
        board.proc.send_signal(signal.SIGINT)
        board.wait_for_line("stopped by Ctrl-C", timeout=10)
        board.proc.wait(10)
    finally:
        board.stop()
    last = int((board.state / "last_seq").read_text())
    got = stored_seqs(board.state)
    assert last > 20, last
    # each reading produced is on flash (the last may have been taken but not yet stored)
    assert got == list(range(1, len(got) + 1)) and len(got) >= last - 1, (last, got[-5:])


def test_a_board_that_stays_stuck_resets_itself_keeping_its_readings(tmp_path):
    cfg = tb_config(free_port(), interval_ms=100)
    cfg["device"]["offline_reset_s"] = 5
    cfg["outbox"]["hold_ms"] = 5000
    board = HostBoard(tmp_path / "board", cfg, user_py=SEQ_FILE_USER).start()
    try:
        board.wait_for_line("with the network up: resetting", timeout=30)
        board.proc.wait(10)
        assert hostboard.restarts(board.proc.returncode), board.console()
    finally:
        board.stop()
    last = int((board.state / "last_seq").read_text())
    got = stored_seqs(board.state)
    # every reading taken is on flash, the held ones too (the last may not have been stored)
    assert got == list(range(1, len(got) + 1)) and len(got) >= last - 1, (last, got[-5:])
