"""Safe mode and the maintenance hold on the host board (the firmware compiled, on the ESP32
model): crash exits and panics count, power cuts and the firmware's own resets do not; safe mode
resets itself after its wait; the hold boots without the app; an error at boot resets instead of
stopping."""

from __future__ import annotations

import json

from tests.integration.hostboard import HostBoard


def config(**device):
    # a broker port nothing listens on: the cloud is never reached, which is not a crash
    return {
        "device": {"name": "sm", "board": "host", "safe_mode_retry_s": 1, **device},
        "ntp": {"servers": []},
        "platform": {"kind": "thingsboard", "url": "mqtt://127.0.0.1:9", "token": "t0k3n"},
        "telemetry": {"interval_s": 1, "health": True},
    }


def boots(board: HostBoard, n: int) -> list[int | None]:
    codes = []
    for _ in range(n):
        board.start()
        assert board.proc is not None
        codes.append(board.proc.wait(30))
    return codes


def test_crash_loop_enters_safe_mode_then_reboots_itself(tmp_path):
    board = HostBoard(tmp_path / "board", config(), user_py="raise RuntimeError('sensor bus dead')\n")
    codes = boots(board, 5)
    # three crash exits; then safe mode, which waits safe_mode_retry_s and resets (75, not a
    # REPL for good); then one more try, which crashes again
    assert codes == [75] * 5, board.console()
    assert "3 crash exits in a row" in board.console() and "sensor bus dead" in board.console()
    assert "SAFE MODE" in board.console()
    assert "3 crash exits" in (board.state / "safemode.txt").read_text()
    assert json.loads((board.state / "crashes.json").read_text())["crashes"] == 3


def test_back_from_safe_mode_the_reason_is_in_health(tmp_path):
    board = HostBoard(tmp_path / "board", config())
    (board.state / "safemode.txt").write_text("3 crash exits in a row; the last: x\n")
    board.start()
    try:
        board.wait_for_line("back from safe mode (3 crash exits in a row; the last: x)")
    finally:
        board.stop()


def test_power_cuts_and_an_unreachable_cloud_are_not_a_crash_loop(tmp_path):
    board = HostBoard(tmp_path / "board", config())
    for _ in range(4):  # pulled plug: killed while the app runs, the cloud never reached
        board.lines.clear()
        board.start()
        board.wait_for_line("mqtt")
        board.kill()
    assert "safe-mode" not in board.console() and "SAFE MODE" not in board.console()
    assert "reset cause power_on" in board.console()
    assert not (board.state / "safemode.txt").exists()


def test_panics_are_crashes_the_firmwares_own_resets_are_not(tmp_path):
    # On an ESP32 a panic (Guru Meditation, an IDF abort) reads back as a HARD reset, as
    # machine.reset() does: the "reset_cause" a host-board process leaves. Only the mark the
    # firmware's own resets write tells them apart.
    board = HostBoard(tmp_path / "board", config())
    for n in (1, 2):
        board.lines.clear()
        (board.state / "reset_cause").write_text("hard")  # the last run ended in a panic
        board.start()
        board.wait_for_line("reset cause hard")
        board.wait_for_line("mqtt")  # the app runs: one crash counted, no safe mode yet
        board.kill()
        assert json.loads((board.state / "crashes.json").read_text())["crashes"] == n
    (board.state / "reset_cause").write_text("hard")
    codes = boots(board, 1)  # a third panic in a row: safe mode, which resets after its wait
    assert codes == [75] and "SAFE MODE" in board.console(), board.console()
    assert "HARD reset the firmware did not make" in (board.state / "safemode.txt").read_text()
    assert (board.state / "reset.mark").exists()  # safe mode's own reset: the next boot is no panic
    board.lines.clear()
    board.start()
    try:
        board.wait_for_line("reset cause hard")
        board.wait_for_line("mqtt")  # the try after safe mode's wait: the app runs
    finally:
        board.kill()
    assert not (board.state / "reset.mark").exists()  # taken once
    assert json.loads((board.state / "crashes.json").read_text())["crashes"] == 2


def test_maintenance_hold_boots_without_the_app_once(tmp_path):
    board = HostBoard(tmp_path / "board", config())
    (board.state / "hold").write_text("deploy")
    (board.state / "reset.mark").write_text("")  # deploy's reset into the hold is marked
    board.start()
    assert board.proc is not None and board.proc.wait(20) == 0, board.console()
    assert "MAINTENANCE HOLD (deploy)" in board.console()
    assert " boot:" not in board.console()  # the app never started: no watchdog either
    assert not (board.state / "hold").exists() and not (board.state / "reset_cause").exists()
    # taken by the boot it was for: a panic at the hold's REPL is not covered by it
    assert not (board.state / "reset.mark").exists()
    board.lines.clear()
    board.start()  # one-shot: the next boot starts the app
    try:
        board.wait_for_line("boot: uplink")
    finally:
        board.stop()


def test_os_error_at_boot_resets_instead_of_stopping(tmp_path):
    board = HostBoard(tmp_path / "board", config())
    # the last run was a watchdog reset, and the crash count cannot be written (a directory
    # where its temp file goes: open() fails as on a full filesystem)
    (board.state / "reset_cause").write_text("watchdog")
    (board.state / "crashes.json.tmp").mkdir()
    codes = boots(board, 1)
    assert codes == [75], board.console()  # not a traceback and a REPL (exit 1)
    assert "could not be stored" in board.console()
    assert (board.state / "reset_cause").read_text() == "hard"
