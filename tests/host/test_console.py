"""The board's console in `uplink sim` and `uplink logs`: a line per message of readings and
per command (level D, firmware/uplink/log.py), none of the device's own requests handed back
by a plain broker, and -q (or device.console = "info" on the board) leaving the D lines out."""

from __future__ import annotations

import json
import os
import pty
import random
import re
import threading
import tty

import pytest

from host_tools.console import Quiet
from tests.host.test_cli import host_fleet
from tests.host.uplink_helpers import Env

CONSOLE = (
    "     0 I boot: uplink 0.1.0 on host (bench), reset cause 0\n"
    "     1 I mqtt: connected \n"
    '     1 D pub: v1/devices/me/telemetry 1 reading 32 B {"temperature":20.3,"led":false}\n'
    '    12 D cmd: setLed {"on":true} -> {"led":true}\n'
    "    13 W mqtt: disconnected connection reset\n"
    "Traceback (most recent call last):\n"
    '  File "uplink/app.py", line 3, in run\n'
    "123456 D pub: t part of a reading 2 B ü€\n"
    "    14 E boot: app crashed: MemoryError: \n"
    "  15 Dx not a log line\n"
    ">>> "
)
WANT = "".join(line for line in CONSOLE.splitlines(keepends=True) if " D " not in line[:9])


def quiet_text(chunks) -> str:
    out: list[str] = []
    q = Quiet(out.append)
    for c in chunks:
        q(c)
    return "".join(out)


def test_quiet_leaves_out_the_d_lines_however_the_text_is_split():
    want = WANT
    assert "D pub" not in want and "D cmd" not in want and "W mqtt" in want and ">>> " in want
    assert quiet_text([CONSOLE]) == want
    assert quiet_text(list(CONSOLE)) == want  # a character at a time
    rnd = random.Random(7)
    for _ in range(200):
        cuts = sorted(rnd.sample(range(1, len(CONSOLE)), rnd.randint(1, 12)))
        chunks = [CONSOLE[a:b] for a, b in zip([0, *cuts], [*cuts, len(CONSOLE)], strict=True)]
        assert quiet_text(chunks) == want, chunks


def test_quiet_holds_back_only_what_may_still_be_a_d_line():
    out: list[str] = []
    q = Quiet(out.append)
    q(">>> ")
    assert out == [">>> "]  # the REPL's prompt has no newline: it shows at once
    q("\n    12 I mq")
    assert "".join(out) == ">>> \n    12 I mq"  # an I line shows as it comes
    q("tt: up\n    13 ")
    assert "".join(out).endswith("tt: up\n")  # "    13 " may still be a D line's start


def logs_of(tmp_path, console: bytes, before=(), after=()):
    master, slave = pty.openpty()
    tty.setraw(slave)
    port = os.ttyname(slave)
    t = threading.Timer(0.5, lambda: os.write(master, console))
    t.start()
    try:
        return Env(tmp_path).run(*before, "logs", "--port", port, "--seconds", "1.5", *after)
    finally:
        t.join()
        os.close(master)
        os.close(slave)


@pytest.mark.parametrize("quiet", ["", "logs -q", "uplink -q"])
def test_logs_shows_the_d_lines_unless_quiet(tmp_path, quiet):
    serial = CONSOLE.replace("\n", "\r\n").encode()  # a board's console ends lines in CR LF
    before, after = {"": ((), ()), "logs -q": ((), ("-q",)), "uplink -q": (("-q",), ())}[quiet]
    r = logs_of(tmp_path, serial, before, after)
    assert r.code == 0, r.output
    assert r.stdout == (WANT if quiet else CONSOLE), r.stdout


def sim_fleet(broker, console: str | None = None) -> str:
    text = host_fleet(broker)
    if console:
        text = text.replace('board = "host"\n', f'board = "host"\nconsole = "{console}"\n')
    return text


class Cloud:
    """The cloud side of a plain broker (paho): it sees the telemetry, and once the device has
    subscribed (its client-side RPCs, sent after its subscriptions, show it) sends it a
    server-side RPC setLed on id 1, the id of the device's own pending getSessionLimits; the
    reply comes on rpc/response/1."""

    def __init__(self, broker):
        import paho.mqtt.client as mqtt

        self.telemetry: list[bytes] = []
        self.replies: list[bytes] = []
        ready = threading.Event()
        c = self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        c.on_connect = lambda c, *a: c.subscribe([("v1/devices/me/telemetry", 1),
                                                  ("v1/devices/me/rpc/request/+", 1),
                                                  ("v1/devices/me/rpc/response/1", 1)])
        c.on_subscribe = lambda *a: ready.set()
        c.on_message = self._got
        c.connect("127.0.0.1", broker.ports["mqtt"])
        c.loop_start()
        assert ready.wait(10)

    def _got(self, c, userdata, m):
        if m.topic.endswith("/telemetry"):
            self.telemetry.append(m.payload)
        elif "/request/" in m.topic:
            if json.loads(m.payload)["method"] == "getCurrentTime":
                c.publish("v1/devices/me/rpc/request/1", json.dumps({"method": "setLed", "params": {"on": True}}), 1)
        else:
            self.replies.append(m.payload)

    def stop(self):
        self.client.loop_stop()
        self.client.disconnect()


def sim(tmp_path, broker, before=(), after=(), console: str | None = None):
    env = Env(tmp_path, sim_fleet(broker, console))
    env.env["UPLINK_SECRET_TOK"] = "console-token-4471"
    cloud = Cloud(broker)
    try:
        r = env.run(*before, "sim", "bench", "--seconds", "10", *after)
    finally:
        cloud.stop()
    assert r.code == 0, r.output
    assert cloud.telemetry, f"nothing reached the broker:\n{r.output[-3000:]}"
    assert cloud.replies and json.loads(cloud.replies[0]) == {"led": True}, r.output[-3000:]
    return r


PUB = re.compile(r"^ +\d+ D pub: v1/devices/me/telemetry \d+ readings? (\d+) B ([\[{].*)$", re.M)
CMD = ' D cmd: setLed {"on":true} -> {"led":true}\n'


@pytest.mark.timeout(120)
def test_sim_shows_each_message_and_command_and_none_of_its_own_requests(tmp_path, broker):
    r = sim(tmp_path, broker)
    pubs = PUB.findall(r.stdout)
    assert pubs, r.stdout[-3000:]
    for size, head in pubs:
        assert len(head.encode()) == int(size) or (head.endswith("...") and len(head.encode()) <= 63)
    assert CMD in r.stdout
    # the device's own getSessionLimits/getCurrentTime, attributes and reply, handed back by
    # mosquitto, are no commands: no failure, no "ignored" downlink, no attributes line
    for bad in ("getSessionLimits", "getCurrentTime", "W cmd:", "W downlink:", "D cmd: attributes"):
        assert bad not in r.stdout, (bad, r.stdout[-3000:])
    assert "console-token-4471" not in r.output


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["sim -q", "uplink -q", 'console = "info"'])
def test_quiet_keeps_the_state_changes_only(tmp_path, broker, how):
    if how == "sim -q":
        r = sim(tmp_path, broker, after=("-q",))
    elif how == "uplink -q":
        r = sim(tmp_path, broker, before=("-q",))
    else:  # on the board itself: the firmware prints no D line
        r = sim(tmp_path, broker, console="info")
    assert " I mqtt: connected" in r.stdout, r.stdout[-3000:]
    assert not re.search(r"^ +\d+ D ", r.stdout, re.M), r.stdout[-3000:]
