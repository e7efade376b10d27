"""The firmware's console as a person reads it: counts in good English, the user's values."""

from tests.integration.hostboard import HostBoard


def test_one_reading_waiting_is_said_in_the_singular(tmp_path):
    cfg = {
        "device": {"name": "words", "board": "host"},
        "ntp": {"servers": []},
        "platform": {"kind": "thingsboard", "url": "mqtt://127.0.0.1:1", "token": "t0k3n"},
        "telemetry": {"interval_s": 3600, "health": False},
        "outbox": {"max_bytes": 65536, "hold_ms": 0},  # each reading to flash as it is taken
    }
    board = HostBoard(tmp_path / "board", cfg).start()
    try:
        assert "outbox: 0 readings waiting, 0 dropped so far" in board.wait_for_line("outbox:")
        # the user's own values, each reading (health keys apart, none here anyway)
        assert "D read: " in board.wait_for_line("D read: ") and "temperature=" in board.console()
        board.wait_for_line("W mqtt: backoff")  # a connect tried: the reading was stored before it
    finally:
        board.stop()
    board = HostBoard(tmp_path / "board", cfg).start()
    try:
        assert "outbox: 1 reading waiting, 0 dropped so far" in board.wait_for_line("outbox:"), board.console()
    finally:
        board.stop()
