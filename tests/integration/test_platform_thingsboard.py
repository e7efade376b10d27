"""ThingsBoard end to end: the whole firmware on the host board, behind the ThingsBoard
broker profile (token in username, no password, v1/... topics, payload shapes, limits)."""

import json
import time

import pytest

from tests.integration.broker_profiles import (
    ThingsBoard,
    e2e_config,
    handled,
    ntp_server,
)
from tests.services import mosquitto_bin

pytestmark = pytest.mark.skipif(mosquitto_bin() is None, reason="mosquitto not installed")

TOKEN = "tb-t0ken-e2e"


def answer_client_rpc(cloud, max_payload=65536):
    def answer(topic, payload):
        if topic.startswith("v1/devices/me/rpc/request/"):
            req = json.loads(payload)
            rid = topic.rsplit("/", 1)[1]
            if req["method"] == "getSessionLimits":
                cloud.send(f"v1/devices/me/rpc/response/{rid}",
                           {"maxPayloadSize": max_payload, "maxInflightMessages": 100,
                            "rateLimits": {"messages": "200:1"}}, wait=False)
            elif req["method"] == "getCurrentTime":
                # ThingsBoard's documented rule chain: a script node answers
                # new Date().getTime(), a bare number (thingsboard.io/docs/user-guide/rpc/)
                cloud.send(f"v1/devices/me/rpc/response/{rid}", str(int(time.time() * 1000)), wait=False)

    cloud.on(answer)


def telemetry_items(cloud):
    """The readings sent as telemetry; the firmware the device reports there at every connect
    (fw_state, current_fw_*: ThingsBoard's OTA guide) is not one."""
    out = []
    for _, p in cloud.got(lambda t, _: t == "v1/devices/me/telemetry"):
        doc = json.loads(p)
        out += [d for d in (doc if isinstance(doc, list) else [doc])
                if "fw_state" not in d and "current_fw_title" not in d]
    return out


def test_telemetry_attributes_rpc_and_shared_attributes(env):
    proxy = env.proxy(ThingsBoard({TOKEN: "device"}))
    cloud = env.cloud()
    answer_client_rpc(cloud)
    board = env.board(e2e_config("thingsboard", proxy.url(), token=TOKEN))
    cloud.wait(lambda t, _: t == "v1/devices/me/telemetry", console=board.console)
    cloud.wait(lambda t, _: len(telemetry_items(cloud)) >= 2, console=board.console)
    now = time.time() * 1000
    for item in telemetry_items(cloud):
        values = item["values"] if "ts" in item else item
        assert values["temp"] == 21.5 and values["seq"] >= 1
        if "ts" in item:
            assert abs(item["ts"] - now) < 600_000
    # the right CONNECT: token as username, no password (the profile refuses anything else)
    assert proxy.accepted() and proxy.accepted()[0][0] == TOKEN
    attrs = json.loads(cloud.wait(lambda t, _: t == "v1/devices/me/attributes")[0][1])
    assert attrs["board"] == "host" and "fw_version" not in attrs  # the OTA shared attribute's name
    # the running firmware as telemetry, as ThingsBoard's OTA guide has it (its firmware
    # dashboard reads it there), with the title an OTA bundle for this board declares
    assert "current_fw_title" not in attrs
    fw = [json.loads(p) for _, p in cloud.got(lambda t, p: t == "v1/devices/me/telemetry" and b"current_fw" in p)]
    assert fw and fw[0]["current_fw_title"] == "uplink-host" and fw[0]["current_fw_version"]
    # server-side RPC: a user method, and a built-in; replies on the same ids
    cloud.send("v1/devices/me/rpc/request/42", {"method": "echo", "params": {"x": 1}})
    r = cloud.wait(lambda t, _: t == "v1/devices/me/rpc/response/42", console=board.console)
    assert json.loads(r[0][1]) == {"echo": {"x": 1}}
    cloud.send("v1/devices/me/rpc/request/43", {"method": "setInterval", "params": {"interval_s": 2}})
    r = cloud.wait(lambda t, _: t == "v1/devices/me/rpc/response/43", console=board.console)
    assert json.loads(r[0][1]) == {"interval_s": 2}
    # a shared attribute change reaches the handler
    cloud.send("v1/devices/me/attributes", {"mode": "eco"})
    board.wait_for_line('HANDLED attributes {"mode": "eco"}')
    # the getCurrentTime answer comes back as a set_time command with the cloud's clock
    line = board.wait_for_line("HANDLED set_time")
    assert abs(json.loads(line.split(" ", 2)[2].rsplit(" ", 1)[0])["ms"] - time.time() * 1000) < 60_000
    assert proxy.violations == []
    assert TOKEN not in board.console()


def test_attribute_request_and_claiming_after_connect(env):
    proxy = env.proxy(ThingsBoard({TOKEN: "device"}))
    cloud = env.cloud()
    answer_client_rpc(cloud)

    def attributes(topic, payload):
        if topic.startswith("v1/devices/me/attributes/request/"):
            rid = topic.rsplit("/", 1)[1]
            cloud.send(f"v1/devices/me/attributes/response/{rid}", {"shared": {"targetTemp": 22}}, wait=False)

    cloud.on(attributes)
    board = env.board(e2e_config("thingsboard", proxy.url(), token=TOKEN, shared_attributes=["targetTemp"],
                                 claim_secret="claim-s3cret", claim_duration_ms=30000))
    req = cloud.wait(lambda t, _: t.startswith("v1/devices/me/attributes/request/"), console=board.console)
    assert json.loads(req[0][1]) == {"sharedKeys": "targetTemp"}
    board.wait_for_line('HANDLED attributes {"targetTemp": 22}')
    claim = cloud.wait(lambda t, _: t == "v1/devices/me/claim", console=board.console)
    assert json.loads(claim[0][1]) == {"secretKey": "claim-s3cret", "durationMs": 30000}
    assert proxy.violations == []
    assert "claim-s3cret" not in board.console()


def test_session_limit_is_honoured(env):
    prof = ThingsBoard({TOKEN: "device"})
    proxy = env.proxy(prof)
    cloud = env.cloud()
    answer_client_rpc(cloud, max_payload=400)
    cfg = e2e_config("thingsboard", proxy.url(), token=TOKEN)
    cfg["telemetry"] = {"interval_ms": 50, "health": False, "batch": 20}
    board = env.board(cfg)
    cloud.wait(lambda t, _: t.startswith("v1/devices/me/rpc/request/"), console=board.console)
    cloud.wait(lambda t, _: t == "v1/devices/me/telemetry", console=board.console)
    # the first reading went out once ready() had the answer, or gave up on it and said so
    # before this D line (one console stream)
    board.wait_for_line("pub: v1/devices/me/telemetry")
    assert "did not say its session limits" not in board.console()
    prof.max_payload = 400  # from here on the broker enforces it
    mark = len(proxy.published)
    proxy.hold()  # no PUBACKs for a while: a backlog of small readings builds up
    time.sleep(2)
    proxy.hold(False)

    def later(p=proxy):
        return [m for _, t, m in p.published[mark:] if t == "v1/devices/me/telemetry"]

    def batched(p):
        return len(later(p)) >= 3 and any(len(json.loads(m)) >= 3 for m in later(p) if m.startswith(b"["))

    proxy.wait_for(batched, what="the backlog in batches of 3 or more")
    assert all(len(m) <= 400 for m in later()), [len(m) for m in later()]
    assert proxy.violations == []


def test_telemetry_carries_ts_once_the_clock_is_set(env):
    proxy = env.proxy(ThingsBoard({TOKEN: "device"}))
    cloud = env.cloud()
    answer_client_rpc(cloud)
    with ntp_server() as ntp:
        board = env.board(e2e_config("thingsboard", proxy.url(), ntp=[ntp], token=TOKEN))
        cloud.wait(lambda t, _: len([i for i in telemetry_items(cloud) if "ts" in i]) >= 3, console=board.console)
    stamped = [i for i in telemetry_items(cloud) if "ts" in i]
    now = time.time() * 1000
    for item in stamped:
        assert set(item) == {"ts", "values"} and abs(item["ts"] - now) < 60_000, item
    seqs = [i["values"]["seq"] for i in stamped]
    ts = [i["ts"] for i in stamped]
    assert ts == sorted(ts) and len(set(ts)) == len(ts) and seqs == sorted(seqs)
    assert proxy.violations == []


def test_wrong_token_is_refused_and_reported(env):
    proxy = env.proxy(ThingsBoard({TOKEN: "device"}))
    cloud = env.cloud()
    board = env.board(e2e_config("thingsboard", proxy.url(), token="not-the-t0ken"))
    board.wait_for_line("refused our credentials")
    assert proxy.connects and all(c[2] == 5 for c in proxy.connects)
    assert not cloud.got(lambda t, _: t == "v1/devices/me/telemetry")
    assert "not-the-t0ken" not in board.console()
    assert proxy.violations == []


def test_provisioning_obtains_and_stores_a_token(env, tmp_path):
    prof = ThingsBoard({}, provisioning=True)
    proxy = env.proxy(prof)
    cloud = env.cloud()
    requests = []

    def provision(topic, payload):
        if topic == "/provision/request":
            requests.append(json.loads(payload))
            prof.tokens["PROVISIONED-tok-1"] = "device"
            cloud.send("/provision/response", {"status": "SUCCESS", "credentialsType": "ACCESS_TOKEN",
                                               "credentialsValue": "PROVISIONED-tok-1"}, wait=False)

    cloud.on(provision)
    answer_client_rpc(cloud)
    board = env.board(e2e_config("thingsboard", proxy.url(), provision_key="pk-1", provision_secret="ps-1"))
    cloud.wait(lambda t, _: t == "v1/devices/me/telemetry", console=board.console)
    assert requests == [{"deviceName": "e2e-dev", "provisionDeviceKey": "pk-1", "provisionDeviceSecret": "ps-1"}]
    users = [c[0] for c in proxy.accepted()]
    assert users[0] == "provision" and users[-1] == "PROVISIONED-tok-1"
    stored = json.loads((tmp_path / "board" / "config.json").read_text())
    assert stored["platform"]["token"] == "PROVISIONED-tok-1"
    assert proxy.violations == []
    assert "PROVISIONED-tok-1" not in board.console() and "ps-1" not in board.console()


def test_provisioning_refusal_stops_with_the_reason(env):
    proxy = env.proxy(ThingsBoard({}, provisioning=True))
    cloud = env.cloud()
    cloud.on(lambda t, p: t == "/provision/request" and cloud.send("/provision/response", {"status": "NOT_FOUND"},
                                                                   wait=False))
    board = env.board(e2e_config("thingsboard", proxy.url(), provision_key="pk-x", provision_secret="ps-x"))
    board.wait_for_line("NOT_FOUND", timeout=30)
    assert proxy.violations == []


def test_gateway_addresses_two_sub_devices(env):
    proxy = env.proxy(ThingsBoard({"gw-t0ken": "gateway"}))
    cloud = env.cloud()
    answer_client_rpc(cloud)
    board = env.board(e2e_config("thingsboard", proxy.url(), token="gw-t0ken", gateway_devices=["A", "B"]))
    connects = cloud.wait(lambda t, _: t == "v1/gateway/connect", console=board.console)
    cloud.wait(lambda t, _: len(cloud.got(lambda t2, _: t2 == "v1/gateway/connect")) >= 2)
    connects = {json.loads(p)["device"] for _, p in cloud.got(lambda t, _: t == "v1/gateway/connect")}
    assert connects == {"A", "B"}
    seen = {}

    def gw_items():
        for _, p in cloud.got(lambda t, _: t == "v1/gateway/telemetry"):
            for dev, items in json.loads(p).items():
                seen.setdefault(dev, []).extend(items)
        return "A" in seen and "B" in seen

    cloud.wait(lambda t, _: gw_items(), console=board.console)
    a = [i["values"] if "values" in i else i for i in seen["A"]]
    b = [i["values"] if "values" in i else i for i in seen["B"]]
    assert all(x["level"] < 1000 for x in a) and all(x["level"] > 1000 for x in b)
    cloud.send("v1/gateway/rpc", {"device": "B", "data": {"id": 7, "method": "valve", "params": {"open": True}}})
    r = cloud.wait(lambda t, p: t == "v1/gateway/rpc" and b'"id"' in p, console=board.console)
    assert json.loads(r[0][1]) == {"device": "B", "id": 7, "data": {"valve": {"open": True}, "device": "B"}}
    assert handled(board, "valve")[0].endswith(" B")
    assert proxy.violations == []


def test_mqtt_basic_credentials_connect_and_a_wrong_password_is_refused(env):
    # thingsboard.io/docs/user-guide/basic-mqtt/: client id, username and password (here all
    # three), as `credentials = { username, password }` and `client_id` (docs/platforms.md)
    basic = {"client_id": "gh-7", "username": "gh-user", "password": "gh-pa55"}
    proxy = env.proxy(ThingsBoard({}, basic=[basic]))
    cloud = env.cloud()
    cfg = e2e_config("thingsboard", proxy.url(), client_id="gh-7",
                     credentials={"username": "gh-user", "password": "gh-pa55"})
    board = env.board(cfg)
    cloud.wait(lambda t, _: t == "v1/devices/me/telemetry", console=board.console)
    assert proxy.accepted()[0][:2] == ("gh-user", "gh-7")
    assert proxy.violations == [] and "gh-pa55" not in board.console()
    wrong = env.board(e2e_config("thingsboard", proxy.url(), name="e2e-other", client_id="gh-7",
                                 credentials={"username": "gh-user", "password": "not-it"}), name="other")
    wrong.wait_for_line("refused our credentials")
    assert [c for c in proxy.connects if c[2] == 4]
    assert proxy.violations == []
