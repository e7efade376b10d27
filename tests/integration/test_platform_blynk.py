"""Blynk end to end: the whole firmware on the host board, behind the Blynk broker profile
(username device + token, clean session, only downlink/... subscriptions without +, device-API
topics only, 1024-byte messages)."""

import json
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from tests.integration.broker_profiles import (
    Blynk,
    e2e_config,
    handled,
)
from tests.services import mosquitto_bin

pytestmark = pytest.mark.skipif(mosquitto_bin() is None, reason="mosquitto not installed")

TOKEN = "bl-dev-t0ken"
TMPL = "TMPL4e2eTest"


def cfg(url, **kw):
    kw.setdefault("token", TOKEN)
    kw.setdefault("template_id", TMPL)
    kw.setdefault("template_name", "E2E")
    return e2e_config("blynk", url, **kw)


def test_telemetry_info_and_datastream_write(env):
    proxy = env.proxy(Blynk({TOKEN}, template_id=TMPL))
    cloud = env.cloud()
    board = env.board(cfg(proxy.url()))
    info = cloud.wait(lambda t, _: t == "info/mcu", console=board.console)
    doc = json.loads(info[0][1])
    assert doc["tmpl"] == TMPL and doc["rxbuff"] == 1024
    assert proxy.accepted()[0][0] == "device"
    assert ("device", "downlink/#") in proxy.subscribed
    # two values per reading: batch_ds (or, for a backlog with time, timestamped batches)
    batch = cloud.wait(lambda t, _: t == "batch_ds", console=board.console)
    assert json.loads(batch[0][1]) == {"seq": json.loads(batch[0][1])["seq"], "temp": 21.5}
    # a datastream write reaches the handler; the new value is written back to confirm it
    cloud.send("downlink/ds/Setpoint", "22.5")
    board.wait_for_line("HANDLED write")
    assert json.loads(handled(board, "write")[0].split(" ", 2)[2].rsplit(" ", 1)[0])["value"] == 22.5
    echo = cloud.wait(lambda t, _: t == "ds/Setpoint", console=board.console)
    assert echo[0][1] == b"22.5"
    cloud.send("downlink/ping", "")
    # the sentinel: a second write after the ping, on the same cloud connection at QoS 1, so
    # mosquitto delivers it after the ping and the device runs it after (one FIFO command queue)
    cloud.send("downlink/ds/Setpoint", "23.5")
    cloud.wait(lambda t, p: t == "ds/Setpoint" and p == b"23.5", console=board.console)
    assert board.proc.poll() is None
    assert proxy.violations == []
    assert TOKEN not in board.console()


def test_the_clock_falls_back_on_blynks_time(env):
    # No SNTP server answers (config ntp: none): the board asks Blynk (get/utc/all/json,
    # docs.blynk.io .../device-mqtt-api/topic-structure) and takes the answer's time
    proxy = env.proxy(Blynk({TOKEN}, template_id=TMPL))
    cloud = env.cloud()
    board = env.board(cfg(proxy.url()))
    ask = cloud.wait(lambda t, _: t == "get/utc/all/json", console=board.console)
    assert ask[0][1] == b""
    cloud.send("downlink/utc/all/json", json.dumps({"time": int(time.time() * 1000), "tz_name": "Europe/Kyiv"}))
    board.wait_for_line("time taken from the cloud")
    assert proxy.violations == []


WIDE_USER = """
_n = [0]

def read():
    _n[0] += 1
    out = {"seq": _n[0]}
    for i in range(80):
        out["Datastream_%02d" % i] = _n[0] * 1000 + i  # which reading it belongs to
    return out
"""


def test_a_reading_over_1024_bytes_is_split_never_sent_oversize(env):
    proxy = env.proxy(Blynk({TOKEN}, template_id=TMPL))
    cloud = env.cloud()
    board = env.board(cfg(proxy.url()), user_py=WIDE_USER)
    cloud.wait(lambda t, _: len(cloud.got(lambda t2, _: t2 == "batch_ds")) >= 4, console=board.console)
    first = {}
    for _, p in cloud.got(lambda t, _: t == "batch_ds"):
        assert len("batch_ds") + len(p) <= 1024
        for k, v in json.loads(p).items():
            if (k == "seq" and v == 1) or (k != "seq" and v // 1000 == 1):
                first[k] = v
    assert len(first) == 81  # the first reading arrived whole, in several messages
    assert proxy.violations == []


def test_sync_gets_current_values_after_connect(env):
    proxy = env.proxy(Blynk({TOKEN}, template_id=TMPL))
    cloud = env.cloud()
    cloud.on(lambda t, p: t == "get/ds" and cloud.send("downlink/ds/Setpoint", "19", wait=False))
    board = env.board(cfg(proxy.url(), sync=["Setpoint"]))
    assert cloud.wait(lambda t, _: t == "get/ds", console=board.console)[0][1] == b"Setpoint"
    board.wait_for_line("HANDLED write")
    params = json.loads(handled(board, "write")[0].split(" ", 2)[2].rsplit(" ", 1)[0])
    assert params == {"name": "Setpoint", "value": 19, "raw": "19"}
    assert proxy.violations == []


def test_reboot_command_resets_the_board(env):
    proxy = env.proxy(Blynk({TOKEN}, template_id=TMPL))
    cloud = env.cloud()
    board = env.board(cfg(proxy.url()))
    cloud.wait(lambda t, _: t == "info/mcu", console=board.console)
    cloud.send("downlink/reboot", "")
    assert board.proc.wait(20) == 75, board.console()  # the host board's "reset me" exit
    assert proxy.violations == []


def test_redirect_moves_the_connection(env):
    second = env.proxy(Blynk({TOKEN}, template_id=TMPL))
    first = env.proxy(Blynk({TOKEN}, template_id=TMPL))
    first.redirect = second.url()
    env.cloud()
    board = env.board(cfg(first.url()))
    second.wait_for(lambda p: p.accepted(), what="a connection at the redirect target")
    second.wait_for(lambda p: any(t == "batch_ds" for _, t, _ in p.published), what="telemetry after the redirect")
    assert first.violations == [] and second.violations == []
    n, m = len(first.accepted()), len(second.accepted())
    # the sentinel: a dropped connection comes back to the new server; the device has one
    # connection at a time, so a return to the old one would be accepted there before this
    second.drop_clients()
    second.wait_for(lambda p: len(p.accepted()) > m, what="the reconnect after a drop")
    assert len(first.accepted()) == n, "went back to the old server"
    assert board.proc.poll() is None


def test_redirect_to_a_websocket_url(env, broker):
    # the target is mosquitto's own WebSocket listener: another scheme, no profile there
    got = []
    ready = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ws-watch")
    sub.on_connect = lambda c, *a: (c.subscribe("batch_ds", 1), ready.set())
    sub.on_message = lambda c, u, m: got.append(m.payload)
    sub.connect("127.0.0.1", broker.ports["mqtt"])
    sub.loop_start()
    try:
        assert ready.wait(5)
        first = env.proxy(Blynk({TOKEN}, template_id=TMPL))
        first.redirect = f"ws://localhost:{broker.ports['ws']}/mqtt"
        board = env.board(cfg(first.url()))
        end = time.monotonic() + 30
        while not got and time.monotonic() < end:
            time.sleep(0.1)
        assert got, (first.connects, first.published[:5], board.console())
        assert first.violations == []
    finally:
        sub.loop_stop()
        sub.disconnect()


def test_wrong_token_is_refused_and_reported(env):
    proxy = env.proxy(Blynk({TOKEN}, template_id=TMPL))
    env.cloud()
    board = env.board(cfg(proxy.url(), token="bl-wr0ng"))
    board.wait_for_line("refused our credentials")
    assert proxy.connects and all(c[2] == 4 for c in proxy.connects)
    assert not proxy.published
    assert "bl-wr0ng" not in board.console()
    assert proxy.violations == []


def test_gateway_addresses_two_sub_devices(env):
    # each sub-device's info/mcu its own (gateway_info); the gateway's token is never a
    # dev/<token>/ target (the profile refuses it, as the Gateway API page says)
    proxy = env.proxy(Blynk(gateways={"gw-t0k": ["tokA", "tokB"]}, template_id=TMPL,
                            templates={"tokA": "TMPLpump", "tokB": "TMPLvalve"}))
    cloud = env.cloud()
    info = {"A": {"template_id": "TMPLpump", "version": "3.1"}, "B": {"template_id": "TMPLvalve", "version": "0.4"}}
    board = env.board(cfg(proxy.url(), token="gw-t0k", gateway_tokens={"A": "tokA", "B": "tokB"}, gateway_info=info))
    assert proxy.wait_for(lambda p: p.accepted())[0][0] == "mgmt_device"
    for tok, want in (("tokA", info["A"]), ("tokB", info["B"])):
        got = cloud.wait(lambda t, _, tok=tok: t == f"dev/{tok}/info/mcu", console=board.console)
        doc = json.loads(got[0][1])
        assert (doc["tmpl"], doc["type"], doc["ver"]) == (want["template_id"], want["template_id"], want["version"])
        cloud.wait(lambda t, _, tok=tok: t.startswith(f"dev/{tok}/ds/level"), console=board.console)
    a = cloud.got(lambda t, _: t.startswith("dev/tokA/ds/level"))[0][1]
    b = cloud.got(lambda t, _: t.startswith("dev/tokB/ds/level"))[0][1]
    assert float(a) < 1000 < float(b) if not a.startswith(b"[") else True
    cloud.send("dev/tokB/downlink/ds/Valve", "1")
    board.wait_for_line("HANDLED write")
    assert handled(board, "write")[0].endswith(" B")
    assert cloud.wait(lambda t, _: t == "dev/tokB/ds/Valve")[0][1] == b"1"
    assert not [t for _, t, _ in proxy.published if "gw-t0k" in t]
    assert proxy.violations == []


def test_gateway_logs_in_with_an_oauth_client(env):
    # The Gateway API's first login option: the OAuth client's id and secret, no token of
    # the gateway's own; every device is reached through dev/<its token>/
    proxy = env.proxy(Blynk(oauth={"oc-e2e": ("oc-s3cret", ["tokA", "tokB"])}, template_id=TMPL))
    cloud = env.cloud()
    board = env.board(e2e_config("blynk", proxy.url(), template_id=TMPL, oauth_client_id="oc-e2e",
                                 oauth_client_secret="oc-s3cret", gateway_tokens={"A": "tokA", "B": "tokB"},
                                 gateway_info={"A": {"template_id": TMPL, "version": "7"}}))
    assert proxy.wait_for(lambda p: p.accepted())[0][0] == "oc-e2e"
    assert json.loads(cloud.wait(lambda t, _: t == "dev/tokA/info/mcu", console=board.console)[0][1])["ver"] == "7"
    for tok in ("tokA", "tokB"):
        cloud.wait(lambda t, _, tok=tok: t.startswith(f"dev/{tok}/ds/level"), console=board.console)
    # B's own template and version are not known: not announced rather than given the gateway's
    assert not cloud.got(lambda t, _: t == "dev/tokB/info/mcu")
    cloud.send("dev/tokA/downlink/ds/Valve", "true")
    board.wait_for_line("HANDLED write")
    assert cloud.wait(lambda t, _: t == "dev/tokA/ds/Valve")[0][1] == b"true"
    assert not [t for _, t, _ in proxy.published if not t.startswith("dev/")]
    assert proxy.violations == []
    assert "oc-s3cret" not in board.console()
