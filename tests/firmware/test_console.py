# The console's per-message lines (uplink.log.pub/cmd, level D as ESPHome's "Sending state"):
# their shape, which `uplink sim -q` and `uplink logs -q` filter on, their cost (a 4 KB
# downlink must not become a 4 KB string), and device.console turning them off on a board.
import gc
import json

from mptest import raises
from uplink import config, log


class Lines:
    """The lines uplink.log prints, while in a `with` block (log's `print`, replaced)."""

    def __enter__(self):
        self.lines = []
        self.level = log.level
        log.print = self.lines.append
        return self

    def __exit__(self, *exc):
        del log.print
        log.level = self.level

    def texts(self):
        # "%6d D pub: ...": the uptime column is the board's, the rest is the line
        return [line[7:] for line in self.lines]


def test_a_message_of_readings_is_one_line_with_topic_count_size_and_payload():
    with Lines() as out:
        log.pub("v1/devices/me/telemetry", b'{"temperature":20.3,"led":false}', 1)
        log.pub("v1/devices/me/telemetry", b"[1,2,3]", 3)
        log.pub("ds/big", b"12", 0)
    assert out.texts() == [
        'D pub: v1/devices/me/telemetry 1 reading 32 B {"temperature":20.3,"led":false}',
        "D pub: v1/devices/me/telemetry 3 readings 7 B [1,2,3]",
        "D pub: ds/big part of a reading 2 B 12",
    ], out.lines
    assert out.lines[0][:7].strip().isdigit()


def test_a_long_payload_is_cut_before_a_character_that_does_not_fit():
    payload = ("x" + "é" * 40).encode()  # byte 60 is the middle of an é
    with Lines() as out:
        log.pub("t", payload, 1)
        log.pub("t", b"y" * 60, 1)  # exactly HEAD bytes: whole, no ellipsis
        log.pub("t", b"y" * 61, 1)
        log.pub("t", b"\xff\xfe\x00binary", 1)
    assert out.texts() == [
        "D pub: t 1 reading 81 B x" + "é" * 29 + "...",
        "D pub: t 1 reading 60 B " + "y" * 60,
        "D pub: t 1 reading 61 B " + "y" * 60 + "...",
        "D pub: t 1 reading 9 B (binary)",
    ], out.lines


def test_a_reading_shows_the_users_values_apart_from_health():
    # the pub: line's payload starts with health keys in hash order: the user's temperature
    # fell past its 60 bytes; this line has the user's read() values alone
    from uplink import app, board

    a = app.App({"telemetry": {"interval_ms": 0, "interval_s": 60, "health": True}}, board.load("host"))
    a.user = type("U", (), {"read": lambda self: {"temperature": 20.5, "led": False}})()
    with Lines() as out:
        values = a.telemetry.take_reading()["values"]
        log.read({"note": "é" * 40})
        log.read({"flow": 3}, "pump-2")  # a gateway's sub-device reading
        log.read({})
    assert "uptime_s" in values and values["temperature"] == 20.5  # the reading keeps its health
    got = out.texts()
    assert got[0] in ("D read: temperature=20.5 led=false", "D read: led=false temperature=20.5"), got
    assert got[1] == 'D read: note="' + "é" * 27 + "...", got
    assert got[2:] == ["D read: pump-2: flow=3", "D read: (no values)"], got


def _sensor(d):
    return d["dht22"]  # the line the error names


def test_an_error_in_read_says_where_once_then_counts():
    from uplink import app, board

    class User:
        def read(self):
            return {"t": _sensor({})}

    a = app.App({"telemetry": {"interval_ms": 0, "interval_s": 60, "health": False}}, board.load("host"))
    a.user = User()
    log._seen.clear()
    with Lines() as out:
        for _ in range(100):
            assert a.telemetry.take_reading()["values"] == {}  # the reading goes on without it
    errs = [t for t in out.texts() if t.startswith("E ")]
    assert len(errs) == 3, errs
    first = errs[0]
    assert first.startswith("E user: read() failed: KeyError: dht22 (at "), first
    # the file's own name, as the board's "user.py:6": no directory, however deep the checkout
    assert "(at test_console.py:" in first and " in read > test_console.py:" in first, first
    assert first.endswith(" in _sensor)"), first
    assert errs[1:] == ["E user: read() failed: KeyError: dht22 (10 times so far)",
                        "E user: read() failed: KeyError: dht22 (100 times so far)"], errs
    with Lines() as out:  # another error: its own first line, with where
        a.user.read = lambda: {"t": 1 // 0}
        a.telemetry.take_reading()
    assert out.texts()[0].startswith("E user: read() failed: ZeroDivisionError: divide by zero (at "), out.lines


def test_a_big_reading_is_never_one_big_string_on_the_heap():
    big = {"k%03d" % i: "v" * 30 for i in range(100)}  # ~4 KB as JSON
    with Lines() as out:
        log.read({"a": 1})  # the head buffer, made once
        gc.collect()
        before = gc.mem_alloc()
        log.read(big)
        used = gc.mem_alloc() - before
    assert used < 1024 < len(json.dumps(big)) // 4, used
    line = out.texts()[1]
    assert line.startswith('D read: k') and line.endswith("...") and len(line) < 80, line


def test_a_bug_in_handle_says_where_a_refusal_does_not():
    import asyncio

    from uplink import commands

    class Cmd:
        params = {}
        device = None

        def __init__(self, name):
            self.name = name

    class User:
        def handle(self, cmd):
            if cmd.name == "no":
                raise ValueError("not now")  # handle()'s way to refuse: no traceback wanted
            return _sensor({})

    a = type("A", (), {"user": User()})()
    log._seen.clear()
    with Lines() as out:
        with raises(KeyError):
            asyncio.run(commands.execute(a, Cmd("setLed")))
        with raises(ValueError):
            asyncio.run(commands.execute(a, Cmd("no")))
    assert len(out.texts()) == 1, out.lines
    assert out.texts()[0].startswith("E user: handle(setLed) failed: KeyError: dht22 (at "), out.lines
    assert out.texts()[0].endswith(" in _sensor)"), out.lines


def test_a_command_line_shows_its_params_and_result():
    with Lines() as out:
        log.cmd("setLed", {"on": True}, {"led": True})
        log.cmd("attributes", {"mode": "eco"}, None)  # a notice: no reply
        log.cmd("pump-1 open", {"valve": "ü" * 40}, [1])
    assert out.texts() == [
        'D cmd: setLed {"on":true} -> {"led":true}',
        'D cmd: attributes {"mode":"eco"}',
        'D cmd: pump-1 open {"valve":"' + "ü" * 25 + "... -> [1]",
    ], out.lines


def test_a_big_downlink_is_never_one_big_string_on_the_heap():
    big = {"k%03d" % i: "v" * 30 for i in range(100)}  # ~4 KB of JSON, as max_downlink allows
    gc.collect()
    # what a call allocates, garbage included, shows in mem_alloc until the next collection:
    # first proven on what the line must not do
    before = gc.mem_alloc()
    whole = json.dumps(big)
    assert gc.mem_alloc() - before >= len(whole) > 4000
    whole = None
    with Lines() as out:
        log.cmd("attributes", {}, None)  # the head buffer, made once
        gc.collect()
        before = gc.mem_alloc()
        log.cmd("attributes", big, big)
        used = gc.mem_alloc() - before
    # the line's few small strings (twice the size on the 64-bit port), never the 4 KB text
    assert used < 2048 < len(json.dumps(big)) // 2, used
    line = out.texts()[1]
    assert line.startswith('D cmd: attributes {"k') and " -> " in line and line.endswith("...") and len(line) < 150


def test_device_console_turns_the_lines_off_on_a_board():
    def cfg(**device):
        d = {"name": "b"}
        d.update(device)
        return json.dumps({"device": d, "platform": {"kind": "thingsboard"}})

    assert config.parse(cfg())["device"]["console"] == "data"  # the default: lines on
    assert config.parse(cfg(console="info"))["device"]["console"] == "info"
    with raises(config.ConfigError, "device.console: expected 'data', 'info' or 'warn', got \"debug\""):
        config.parse(cfg(console="debug"))
    with Lines() as out:
        log.level = log.LEVELS.index("info")
        log.pub("t", b"1", 1)
        log.read({"t": 1})
        log.cmd("ping", {}, {"pong": True})
        log.info("mqtt", "connected")
        log.level = log.LEVELS.index("warn")
        log.info("mqtt", "connected again")
        log.warn("mqtt", "disconnected")
        log.error("mqtt", "refused")
    assert out.texts() == ["I mqtt: connected", "W mqtt: disconnected", "E mqtt: refused"], out.lines


def test_a_line_that_finds_no_memory_is_left_out_not_raised():
    # the publisher and the command task call these after the work is done: a MemoryError
    # here must not undo it (the command task would end, the publisher resend)
    def full(line):
        raise MemoryError

    log.print = full
    try:
        log.pub("t", b"[1]", 1)
        log.read({"t": 1})
        log.cmd("setLed", {"on": True}, {"led": True})
    finally:
        del log.print
