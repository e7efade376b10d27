"""uplink.cloud end to end: each call from a user.py in the firmware on the host board (the
ESP32 model where installed), behind the cloud's broker profile (which closes the connection
on any topic or payload shape its docs do not give); and what must not be lost (events,
client attributes) arriving after an outage, through the outbox."""

import json
import time

import pytest

from tests.faultproxy import FaultProxy
from tests.integration.broker_profiles import Blynk, ThingsBoard, e2e_config
from tests.integration.test_platform_thingsboard import answer_client_rpc
from tests.services import mosquitto_bin

pytestmark = pytest.mark.skipif(mosquitto_bin() is None, reason="mosquitto not installed")

TOKEN = "tb-cloud-api-t0ken"
BL_TOKEN = "bl-cloud-api-t0ken"

TB_USER = """
import asyncio
import json
from uplink import cloud

def read():
    return {"t": 1}

async def handle(cmd):
    if cmd.name == "probe":
        got = await cloud.get_attributes(client=["serial"], shared=["limit"], timeout_s=5)
        print("CLOUD attributes " + json.dumps(got))
        await cloud.claim("claim-s3cret", 30000)
        print("CLOUD claimed")
        try:
            await cloud.rpc("nobodyAnswers", {"x": 1}, timeout_s=1)
        except cloud.Timeout as e:
            print("CLOUD timeout " + str(e))
        try:
            await cloud.event("x")
        except cloud.NotSupported as e:
            print("CLOUD notsupported " + str(e))
        return {"ok": True}
    if cmd.name == "burst":
        for i in range(cmd.params["n"]):
            await cloud.set_attributes({"seq": i})
            await asyncio.sleep_ms(300)
        return None
    raise ValueError(cmd.name)
"""


def test_thingsboard_calls(env):
    proxy = env.proxy(ThingsBoard({TOKEN: "device"}))
    cloud = env.cloud()
    answer_client_rpc(cloud)

    def server(topic, payload):
        if topic.startswith("v1/devices/me/attributes/request/"):
            rid = topic.rsplit("/", 1)[1]
            cloud.send(f"v1/devices/me/attributes/response/{rid}",
                       {"client": {"serial": "S-1"}, "shared": {"limit": 7}}, wait=False)

    cloud.on(server)
    board = env.board(e2e_config("thingsboard", proxy.url(), token=TOKEN), user_py=TB_USER)
    cloud.wait(lambda t, _: t == "v1/devices/me/telemetry", console=board.console)
    cloud.send("v1/devices/me/rpc/request/5", {"method": "probe", "params": {}})
    line = board.wait_for_line("CLOUD attributes")
    assert json.loads(line.split(" ", 2)[2]) == {"client": {"serial": "S-1"}, "shared": {"limit": 7}}
    req = [json.loads(p) for t, p in cloud.got(lambda t, _: t.startswith("v1/devices/me/attributes/request/"))]
    assert {"clientKeys": "serial", "sharedKeys": "limit"} in req
    board.wait_for_line("CLOUD claimed")
    claim = cloud.wait(lambda t, _: t == "v1/devices/me/claim", console=board.console)
    assert json.loads(claim[0][1]) == {"secretKey": "claim-s3cret", "durationMs": 30000}
    assert "no answer within 1 s" in board.wait_for_line("CLOUD timeout")
    rpc = [json.loads(p) for t, p in cloud.got(lambda t, _: t.startswith("v1/devices/me/rpc/request/"))]
    assert {"method": "nobodyAnswers", "params": {"x": 1}} in rpc
    assert "ThingsBoard has no log events" in board.wait_for_line("CLOUD notsupported")
    r = cloud.wait(lambda t, _: t == "v1/devices/me/rpc/response/5", console=board.console)
    assert json.loads(r[0][1]) == {"ok": True}
    assert proxy.violations == []
    assert "claim-s3cret" not in board.console()


def _outage(fault, seconds):
    fault.refuse(True)
    fault.cut_all()
    time.sleep(seconds)
    fault.refuse(False)


def test_client_attributes_survive_an_outage(env, broker):
    prof = env.proxy(ThingsBoard({TOKEN: "device"}))
    fault = FaultProxy(prof.port, seed=16)
    try:
        cloud = env.cloud()
        answer_client_rpc(cloud)
        board = env.board(e2e_config("thingsboard", f"mqtt://127.0.0.1:{fault.port}", token=TOKEN), user_py=TB_USER)
        cloud.wait(lambda t, _: t == "v1/devices/me/telemetry", console=board.console)
        cloud.send("v1/devices/me/rpc/request/6", {"method": "burst", "params": {"n": 10}})
        cloud.wait(lambda t, p: t == "v1/devices/me/attributes" and b'"seq"' in p, console=board.console)
        _outage(fault, 2)  # most of the burst is stored while the link is down
        seqs = lambda: sorted({json.loads(p)["seq"] for t, p in cloud.got(  # noqa: E731
            lambda t, p: t == "v1/devices/me/attributes" and b'"seq"' in p)})
        cloud.wait(lambda t, _: seqs() == list(range(10)), console=board.console, timeout=40)
        sent = [p for t, p in cloud.got(lambda t, p: t == "v1/devices/me/attributes" and b'"seq"' in p)]
        assert len(sent) <= 20, "a duplicate storm"
        assert prof.violations == []
    finally:
        fault.close()


BL_USER = """
import asyncio
from uplink import cloud

def read():
    return {"Level": 1}

async def changed(values):
    print("CLOUD changed %s" % sorted(values.items()))
    n = values.get("Burst")
    if isinstance(n, int) and n > 0:
        for i in range(n):
            await cloud.event("tick", "tick %d" % i)
            await asyncio.sleep_ms(300)
    if "Label" in values:
        print("CLOUD prop %s" % await cloud.prop("Level", "label", values["Label"]))
        print("CLOUD meta %s" % await cloud.meta("Serial Number", timeout_s=5))
        try:
            await cloud.rpc("x")
        except cloud.NotSupported as e:
            print("CLOUD notsupported " + str(e))

cloud.on_change(changed)
"""


def test_blynk_calls_and_events_survive_an_outage(env):
    prof = env.proxy(Blynk({BL_TOKEN}, template_id="TMPLapi"))
    fault = FaultProxy(prof.port, seed=17)
    try:
        cloud = env.cloud()

        def server(topic, payload):
            if topic == "get/meta":
                cloud.send("downlink/meta/" + payload.decode(), "SN-9", wait=False)

        cloud.on(server)
        cfg = e2e_config("blynk", f"mqtt://127.0.0.1:{fault.port}", token=BL_TOKEN, template_id="TMPLapi",
                         template_name="API")
        board = env.board(cfg, user_py=BL_USER)
        cloud.wait(lambda t, _: t == "get/ds/all", console=board.console)
        cloud.send("downlink/ds/Label", "Tank")
        assert "CLOUD prop True" in board.wait_for_line("CLOUD prop")
        cloud.wait(lambda t, p: t == "ds/Level/prop/label" and p == b"Tank", console=board.console)
        assert board.wait_for_line("CLOUD meta").endswith("SN-9")
        assert ("get/meta", b"Serial Number") in cloud.got()
        assert "Blynk has no client-side RPC" in board.wait_for_line("CLOUD notsupported")
        cloud.send("downlink/ds/Burst", "8")
        cloud.wait(lambda t, _: t == "event/tick", console=board.console)
        _outage(fault, 2)
        ticks = lambda: sorted({p for t, p in cloud.got(lambda t, _: t == "event/tick")})  # noqa: E731
        want = sorted(b"tick %d" % i for i in range(8))
        cloud.wait(lambda t, _: ticks() == want, console=board.console, timeout=40)
        assert len(cloud.got(lambda t, _: t == "event/tick")) <= 16, "a duplicate storm"
        assert prof.violations == []
        assert BL_TOKEN not in board.console()
    finally:
        fault.close()


GW_USER = """
import json
from uplink import cloud

def read():
    return {"t": 1}

def read_devices():
    return {"A": {"level": 1}}

async def handle(cmd):
    if cmd.name == "gwprobe":
        await cloud.set_attributes({"model": "pump-7"}, device="A")
        got = await cloud.get_attributes(client=["serial"], shared=["limit", "mode"], device="A", timeout_s=5)
        print("CLOUD gw attributes " + json.dumps(got))
        await cloud.claim("gw-claim-s3cret", 30000, device="A")
        await cloud.disconnect_device("B")
        print("CLOUD gw done")
        try:
            await cloud.get_attributes(shared=["x"])
        except Exception as e:
            print("CLOUD gw own " + type(e).__name__)
        return {"ok": True}
    raise ValueError(cmd.name)
"""


def test_thingsboard_gateway_calls_for_a_sub_device(env):
    # thingsboard.io/docs/reference/gateway-mqtt-api/: attributes publish and request, claim,
    # disconnect, each for a sub-device, from user.py through uplink.cloud
    proxy = env.proxy(ThingsBoard({"gw-t0ken": "gateway"}))
    cloud = env.cloud()
    answer_client_rpc(cloud)

    def server(topic, payload):
        if topic == "v1/gateway/attributes/request":
            req = json.loads(payload)
            if req["client"]:  # one key: ThingsBoard answers "value"
                cloud.send("v1/gateway/attributes/response", {"id": req["id"], "device": req["device"],
                                                              "value": "S-9"}, wait=False)
            else:
                cloud.send("v1/gateway/attributes/response", {"id": req["id"], "device": req["device"],
                                                              "values": {"limit": 7, "mode": "eco"}}, wait=False)

    cloud.on(server)
    board = env.board(e2e_config("thingsboard", proxy.url(), token="gw-t0ken", gateway_devices=["A", "B"]),
                      user_py=GW_USER)
    cloud.wait(lambda t, _: t == "v1/gateway/telemetry", console=board.console)
    cloud.send("v1/devices/me/rpc/request/9", {"method": "gwprobe", "params": {}})
    line = board.wait_for_line("CLOUD gw attributes")
    assert json.loads(line.split(" ", 3)[3]) == {"client": {"serial": "S-9"}, "shared": {"limit": 7, "mode": "eco"}}
    board.wait_for_line("CLOUD gw done")
    got = {t: [json.loads(p) for _, p in cloud.wait(lambda t2, _, t=t: t2 == t, console=board.console)]
           for t in ("v1/gateway/attributes", "v1/gateway/claim", "v1/gateway/disconnect",
                     "v1/gateway/attributes/request")}
    assert got["v1/gateway/attributes"] == [{"A": {"model": "pump-7"}}]
    assert got["v1/gateway/claim"] == [{"A": {"secretKey": "gw-claim-s3cret", "durationMs": 30000}}]
    assert got["v1/gateway/disconnect"] == [{"device": "B"}]
    reqs = got["v1/gateway/attributes/request"]
    assert [(r["device"], r["client"], r["keys"]) for r in reqs] == [("A", True, ["serial"]),
                                                                     ("A", False, ["limit", "mode"])]
    # without device=, the gateway's own attributes, through the device API as before
    assert board.wait_for_line("CLOUD gw own").endswith("Timeout")
    assert {"sharedKeys": "x"} in [json.loads(p) for _, p in cloud.got(
        lambda t, _: t.startswith("v1/devices/me/attributes/request/"))]
    # after a reconnect, B stays disconnected: only A is announced again (on_connect's
    # announcements go out before the readings of two telemetry intervals later)
    n = len(cloud.got(lambda t, _: t == "v1/gateway/connect"))
    proxy.drop_clients()
    cloud.wait(lambda t, _: len(cloud.got(lambda t2, _: t2 == "v1/gateway/connect")) > n, console=board.console)
    m = len(cloud.got(lambda t, _: t == "v1/devices/me/telemetry"))
    cloud.wait(lambda t, _: len(cloud.got(lambda t2, _: t2 == "v1/devices/me/telemetry")) >= m + 2)
    again = [json.loads(p)["device"] for _, p in cloud.got(lambda t, _: t == "v1/gateway/connect")][n:]
    assert again == ["A"]
    assert proxy.violations == []
