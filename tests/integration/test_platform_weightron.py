"""Weightron end to end: the whole firmware on the host board, behind the Weightron broker
profile (username = Application ID, password = a current token, <app>/devices/<id> only,
{"$timestamp", "$native"} payloads)."""

import datetime
import json
import time

import pytest

from tests.integration.broker_profiles import (
    E2E_USER,
    Weightron,
    e2e_config,
    handled,
    ntp_server,
)
from tests.services import mosquitto_bin

pytestmark = pytest.mark.skipif(mosquitto_bin() is None, reason="mosquitto not installed")

APP = "app-e2e-42"
READS_USER = E2E_USER.replace("    _n[0] += 1\n", '    _n[0] += 1\n    print("READ %d" % _n[0])\n')
assert READS_USER != E2E_USER


def stamp(line: str) -> int:
    """The uptime (s) a firmware console line starts with; -1 for lines without one."""
    head = line.split(None, 2)
    return int(head[0]) if len(head) > 2 and head[0].isdigit() and head[1] in "DIWE" else -1


def test_telemetry_and_commands(env):
    proxy = env.proxy(Weightron(APP, {"access-t0ken-1"}))
    cloud = env.cloud()
    board = env.board(e2e_config("weightron", proxy.url(), publish=True, application_id=APP, device_id="scale-7",
                                 token="access-t0ken-1", command_topic=f"{APP}/devices/scale-7/commands"))
    msgs = cloud.wait(lambda t, _: t == f"{APP}/devices/scale-7", console=board.console)
    doc = json.loads(msgs[0][1])
    assert doc["$native"]["temp"] == 21.5 and doc["$native"]["seq"] >= 1
    assert set(doc) <= {"$timestamp", "$native"}
    assert proxy.accepted()[0][0] == APP
    cloud.send(f"{APP}/devices/scale-7/commands", {"method": "echo", "params": {"tare": 1}})
    board.wait_for_line("HANDLED echo")
    assert json.loads(handled(board, "echo")[0].split(" ", 2)[2].rsplit(" ", 1)[0]) == {"tare": 1}
    assert proxy.violations == []
    assert "access-t0ken-1" not in board.console()


def test_timestamp_is_iso_8601_utc(env):
    proxy = env.proxy(Weightron(APP, {"access-t0ken-1"}))
    cloud = env.cloud()
    with ntp_server() as ntp:
        board = env.board(e2e_config("weightron", proxy.url(), ntp=[ntp], publish=True, application_id=APP,
                                     device_id="scale-7", token="access-t0ken-1"))
        msgs = cloud.wait(lambda t, p: t == f"{APP}/devices/scale-7" and b"$timestamp" in p, console=board.console)
    doc = json.loads(msgs[0][1])
    when = datetime.datetime.fromisoformat(doc["$timestamp"].replace("Z", "+00:00"))
    assert abs(when.timestamp() - time.time()) < 60, doc
    assert proxy.violations == []


def test_expired_token_is_refused_and_reported(env):
    proxy = env.proxy(Weightron(APP, {"access-t0ken-2"}))
    env.cloud()
    board = env.board(e2e_config("weightron", proxy.url(), publish=True, application_id=APP, token="expired-t0ken"))
    board.wait_for_line("refused our credentials")
    assert proxy.connects and all(c[0] == APP and c[2] == 4 for c in proxy.connects)
    assert not proxy.published
    assert "expired-t0ken" not in board.console()
    assert proxy.violations == []


def test_watching_devices_without_write_permission(env):
    # the default: subscribe to chosen devices/hubs, hand each value to user.py, publish nothing
    proxy = env.proxy(Weightron(APP, {"access-t0ken-1"}, write=False))
    cloud = env.cloud()
    board = env.board(e2e_config("weightron", proxy.url(), application_id=APP, token="access-t0ken-1",
                                 watch=["devices/bridge-1", "hubs/#"]), user_py=READS_USER)
    t0 = stamp(board.wait_for_line("mqtt: connected"))
    doc = {"$timestamp": "2026-01-01T12:00:00Z", "$native": {"weight": 3120}}
    for _ in range(50):  # until the subscription is in place at the broker
        cloud.send(f"{APP}/devices/bridge-1", doc)
        if handled(board, "watch"):
            break
        time.sleep(0.2)
    cloud.send(f"{APP}/devices/bridge-2", {"$native": {"weight": 1}})  # not watched
    cloud.send(f"{APP}/hubs/hub-9", {"$native": {"light": "red"}})
    board.wait_for_line("hubs/hub-9")
    got = [json.loads(ln.split(" ", 2)[2].rsplit(" ", 1)[0]) for ln in handled(board, "watch")]
    assert got[0] == {"topic": "devices/bridge-1", "value": doc}
    assert {"topic": "hubs/hub-9", "value": {"$native": {"light": "red"}}} in got
    assert all(g["topic"] != "devices/bridge-2" for g in got)
    # The sentinel, on the device's own clock: a console line stamped 3 s after the connect
    # (2 s at least: two telemetry intervals). A device taking readings would have printed
    # READ before it (one console stream), and the profile refuses any publish.
    for k in range(60):
        if any(stamp(ln) >= t0 + 3 for ln in list(board.lines)):
            break
        cloud.send(f"{APP}/hubs/tick", {"$native": {"k": k}})  # handled: a stamped D line
        board.wait_for_line(f'"k": {k}}}')
        time.sleep(0.2)
    else:
        raise AssertionError("the device's clock did not move 3 s:\n" + board.console())
    assert not [ln for ln in board.lines if ln.startswith("READ")], board.console()
    assert proxy.published == [] and proxy.violations == []


def test_publish_without_the_write_permission_names_it(env):
    proxy = env.proxy(Weightron(APP, {"access-t0ken-1"}, write=False))
    env.cloud()
    board = env.board(e2e_config("weightron", proxy.url(), publish=True, application_id=APP,
                                 device_id="scale-7", token="access-t0ken-1"))
    board.wait_for_line("Weightron refused the publish to app-e2e-42/devices/scale-7")
    assert "the Devices write permission is off by default; ask your reseller" in board.console()
