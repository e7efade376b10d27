"""The examples under examples/, each as a user would run it: its user.py in the firmware on the
host board (the ESP32 model where installed), behind its cloud's broker profile, asserting the
documented topics and shapes are what it uses (the profile closes the connection on others)."""

import json
import time
from pathlib import Path

import pytest

from tests.integration.broker_profiles import Blynk, ThingsBoard, Weightron, e2e_config
from tests.integration.test_platform_thingsboard import answer_client_rpc
from tests.services import mosquitto_bin

pytestmark = pytest.mark.skipif(mosquitto_bin() is None, reason="mosquitto not installed")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TOKEN = "tb-thermo-t0ken"
BL_TOKEN = "bl-switch-t0ken"
WT_APP = "app-bridge-7"
WT_TOKEN = "wt-access-t0ken"


def _fleet_ok(name):
    from host_tools.fleet import parse_fleet

    path = EXAMPLES / name / "fleet.toml"
    fleet = parse_fleet(path.read_text(), path)
    assert fleet.devices


def test_thermostat_on_thingsboard(env):
    _fleet_ok("thermostat_thingsboard")
    proxy = env.proxy(ThingsBoard({TOKEN: "device"}))
    cloud = env.cloud()
    answer_client_rpc(cloud)
    setpoint = {"v": 22.5}

    def server(topic, payload):
        rid = topic.rsplit("/", 1)[1]
        if topic.startswith("v1/devices/me/attributes/request/"):
            cloud.send(f"v1/devices/me/attributes/response/{rid}", {"shared": {"setpoint": setpoint["v"]}}, wait=False)
        elif topic.startswith("v1/devices/me/rpc/request/") and json.loads(payload)["method"] == "getWeather":
            cloud.send(f"v1/devices/me/rpc/response/{rid}", {"temp": -3}, wait=False)

    cloud.on(server)
    board = env.board(e2e_config("thingsboard", proxy.url(), token=TOKEN),
                      user_py=(EXAMPLES / "thermostat_thingsboard" / "user.py").read_text())

    def attrs(key):
        out = []
        for _, p in cloud.got(lambda t, _: t == "v1/devices/me/attributes"):
            d = json.loads(p)
            if key in d:
                out.append(d)
        return out

    # after connecting: the shared setpoint asked, applied, reported as a client attribute
    # (the firmware's own question at connect, for the fw_* OTA attributes, is not the example's)
    req = cloud.wait(lambda t, p: t.startswith("v1/devices/me/attributes/request/") and b"fw_title" not in p,
                     console=board.console)
    assert json.loads(req[0][1]) == {"sharedKeys": "setpoint"}
    board.wait_for_line("THERMOSTAT setpoint 22.5")
    cloud.wait(lambda t, _: bool(attrs("setpoint_applied")), console=board.console)
    assert attrs("setpoint_applied")[0]["setpoint_applied"] == 22.5
    # the weather by client-side RPC, its answer reported as a client attribute
    rpc = [json.loads(p) for t, p in cloud.got(lambda t, _: t.startswith("v1/devices/me/rpc/request/"))]
    assert {"method": "getWeather", "params": {"city": "Oslo"}} in rpc
    board.wait_for_line("THERMOSTAT outside -3")
    cloud.wait(lambda t, _: bool(attrs("outside_temp")), console=board.console)
    # a dashboard change of the shared attribute
    cloud.send("v1/devices/me/attributes", {"setpoint": 19})
    board.wait_for_line("THERMOSTAT setpoint 19")
    cloud.wait(lambda t, _: any(a["setpoint_applied"] == 19 for a in attrs("setpoint_applied")), console=board.console)
    # a server-side RPC
    cloud.send("v1/devices/me/rpc/request/77", {"method": "setMode", "params": {"mode": "off"}})
    r = cloud.wait(lambda t, _: t == "v1/devices/me/rpc/response/77", console=board.console)
    assert json.loads(r[0][1]) == {"mode": "off", "heating": False}
    # the current setpoint again after a reconnect
    setpoint["v"] = 21
    n = len(cloud.got(lambda t, _: t.startswith("v1/devices/me/attributes/request/")))
    proxy.drop_clients()
    cloud.wait(lambda t, _: len(cloud.got(lambda t, _: t.startswith("v1/devices/me/attributes/request/"))) > n,
               console=board.console)
    board.wait_for_line("THERMOSTAT setpoint 21")
    assert len(proxy.accepted()) >= 2
    assert proxy.violations == []
    assert TOKEN not in board.console()


def test_switch_on_blynk(env):
    _fleet_ok("switch_blynk")
    proxy = env.proxy(Blynk({BL_TOKEN}, template_id="TMPL4sw", booleans={"Relay", "Switch"}))
    cloud = env.cloud()

    def server(topic, payload):
        if topic == "get/meta" and payload == b"Serial Number":
            cloud.send("downlink/meta/Serial Number", "SN-0042", wait=False)
        elif topic == "get/ds/all":
            cloud.send("downlink/ds/Switch", state["Switch"], wait=False)

    state = {"Switch": "0"}
    cloud.on(server)
    cfg = e2e_config("blynk", proxy.url(), token=BL_TOKEN, template_id="TMPL4sw", template_name="Switch")
    board = env.board(cfg, user_py=(EXAMPLES / "switch_blynk" / "user.py").read_text())
    # after connecting: every datastream's current value asked; the metadata read answered
    cloud.wait(lambda t, _: t == "get/ds/all", console=board.console)
    assert cloud.got(lambda t, _: t == "get/ds/all")[0][1] == b""
    board.wait_for_line("SWITCH serial SN-0042")
    # the app switches the relay: an event with its description, the widget's colour
    cloud.send("downlink/ds/Switch", "1")
    board.wait_for_line("SWITCH relay on")
    ev = cloud.wait(lambda t, _: t == "event/switched", console=board.console)
    assert ev[0][1] == b"relay on from the app"
    cloud.wait(lambda t, p: t == "ds/Switch/prop/color" and p == b"#23C48E", console=board.console)
    cloud.wait(lambda t, p: t.startswith("ds/Relay") and b"true" in p, console=board.console)  # the reading
    # switched off while the device was away: learnt from get/ds/all after the reconnect
    state["Switch"] = "0"
    n = len(cloud.got(lambda t, _: t == "get/ds/all"))
    proxy.drop_clients()
    cloud.wait(lambda t, _: len(cloud.got(lambda t, _: t == "get/ds/all")) > n, console=board.console)
    board.wait_for_line("SWITCH relay off")
    ev = cloud.wait(lambda t, p: t == "event/switched" and p == b"relay off from the app", console=board.console)
    assert proxy.violations == []
    assert BL_TOKEN not in board.console()


def test_weighbridge_display_on_weightron(env):
    _fleet_ok("weighbridge_weightron")
    # without the Devices write permission, as Weightron hands out by default: the profile
    # refuses any publish, so the example can only pass by watching
    proxy = env.proxy(Weightron(WT_APP, {WT_TOKEN}, write=False))
    cloud = env.cloud()
    cfg = e2e_config("weightron", proxy.url(), application_id=WT_APP, token=WT_TOKEN, watch=["devices/bridge-1"])
    board = env.board(cfg, user_py=(EXAMPLES / "weighbridge_weightron" / "user.py").read_text())
    board.wait_for_line("mqtt: connected")
    bridge = f"{WT_APP}/devices/bridge-1"

    def weigh(kg, line):
        doc = {"$timestamp": "2026-11-30T12:00:00Z", "$native": {"weight": kg}}
        for _ in range(50):  # until the subscription is in place at the broker
            cloud.send(bridge, doc)
            if any(ln.endswith(line) for ln in list(board.lines)):
                return
            time.sleep(0.2)
        raise AssertionError(f"no {line!r} on the console:\n{board.console()[-2000:]}")

    weigh(15000, "WEIGHBRIDGE 15000 kg amber")
    cloud.send(f"{WT_APP}/devices/bridge-2", {"$native": {"weight": 99999}})  # not watched
    weigh(45500, "WEIGHBRIDGE 45500 kg red")
    cloud.send(bridge, {"$native": {"tare": 1}})  # a reading without a weight: said, not shown
    board.wait_for_line("WEIGHBRIDGE no weight")
    # after a reconnect the subscription is back and the light follows the next truck
    proxy.drop_clients()
    weigh(120, "WEIGHBRIDGE 120 kg green")
    assert "99999" not in board.console()
    assert len(proxy.accepted()) >= 2
    assert proxy.published == [] and proxy.violations == []
    assert WT_TOKEN not in board.console()
