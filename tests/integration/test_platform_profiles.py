"""The broker profiles themselves: each refuses what its cloud refuses and lets the real
traffic through, so the end-to-end platform tests can trust them (a profile that accepts
everything would make those tests pass for wrong firmware)."""

from __future__ import annotations

import re
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from tests.integration.broker_profiles import (
    Biotz,
    Blynk,
    Cloud,
    ProfileProxy,
    ThingsBoard,
    Weightron,
)


class Dev:
    """A paho client posing as a device, talking to a proxy."""

    def __init__(self, port, user=None, password=None, client_id="dev", clean=True):
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
        if user is not None:
            self.c.username_pw_set(user, password)
        self.rc = None
        self.msgs = []
        self.connected = threading.Event()
        self.gone = threading.Event()
        self.subacks: set = set()
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = lambda c, u, mid, *a: self.subacks.add(mid)
        self.c.on_disconnect = lambda *a: self.gone.set()
        self.c.on_message = lambda c, u, m: self.msgs.append((m.topic, m.payload))
        self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()

    def _on_connect(self, c, u, flags, rc, props=None):
        # paho reports MQTT 3.1.1 CONNACK codes as MQTT 5 reason codes; back to 3.1.1's
        v = rc.value if hasattr(rc, "value") else rc
        self.rc = {0: 0, 132: 1, 133: 2, 136: 3, 134: 4, 135: 5}.get(v, v)
        self.connected.set()

    def wait(self):
        assert self.connected.wait(5), "no CONNACK"
        return self.rc

    def pub(self, topic, payload, qos=1):
        """A QoS 1 publish waits for its PUBACK, and that PUBACK is the sentinel of the checks
        that nothing was refused: the proxy judges a connection's packets in order, forwards
        each (so the broker can acknowledge it) only once judged, and closes the connection at
        the first it refuses. A PUBACK means everything sent before it was let through."""
        info = self.c.publish(topic, payload, qos)
        if qos:
            info.wait_for_publish(5)
            assert info.is_published(), f"no PUBACK for {topic}: refused? {self.gone.is_set()}"
        return info

    def subscribe(self, topic):
        """Subscribe and wait for the SUBACK: the subscription is in place at the broker."""
        mid = self.c.subscribe(topic, 1)[1]
        end = time.monotonic() + 5
        while mid not in self.subacks:
            assert time.monotonic() < end, f"no SUBACK for {topic}"
            time.sleep(0.01)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def proxies(broker):
    made = []

    def make(profile):
        p = ProfileProxy(profile, broker.ports["mqtt"]).start()
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()


def closed_for(proxy, dev, text):
    assert dev.gone.wait(5), "the proxy did not close the connection"
    hits = [v for v in proxy.violations if text in v]
    assert hits, proxy.violations
    # each names the documented (or assumed) rule it broke: RULES in broker_profiles
    assert all(re.search(r"\[[a-z0-9_.]+\]$", v) for v in hits), hits


def test_thingsboard_token_rules(proxies):
    p = proxies(ThingsBoard({"GOOD": "device"}))
    assert Dev(p.port, "BAD").wait() == 5  # unknown token: not authorised
    d = Dev(p.port, "GOOD", "pw")
    assert d.wait() != 0
    assert any("no password" in v for v in p.violations)
    p.violations.clear()
    d = Dev(p.port, "GOOD")
    assert d.wait() == 0
    d.c.subscribe("v1/devices/me/rpc/request/+", 1)
    d.pub("v1/devices/me/telemetry", b'[{"ts":1767268800000,"values":{"t":1}},{"t":2}]')
    d.pub("v1/devices/me/attributes", b'{"board":"esp32"}')
    assert p.violations == []  # the last PUBACK came: all before it was judged (Dev.pub)
    d.pub("v1/devices/me/telemetry", b'{"ts":1767268800,"values":{"t":1}}', qos=0)
    closed_for(p, d, "not epoch milliseconds")
    p.violations.clear()
    d = Dev(p.port, "GOOD")
    d.wait()
    d.pub("v1/devices/me/attributes", b'{"fw_version":"1.0"}', qos=0)  # the OTA shared attribute's name
    closed_for(p, d, "OTA shared attribute")


def test_thingsboard_topic_and_size(proxies):
    p = proxies(ThingsBoard({"GOOD": "device"}, max_payload=100))
    d = Dev(p.port, "GOOD")
    d.wait()
    d.pub("v1/gateway/telemetry", b'{"A":[{"t":1}]}', qos=0)
    closed_for(p, d, "not a ThingsBoard device topic")
    p.violations.clear()
    d = Dev(p.port, "GOOD")
    d.wait()
    d.pub("v1/devices/me/telemetry", b'{"x":"' + b"y" * 120 + b'"}', qos=0)
    closed_for(p, d, "over the 100-byte limit")
    p.violations.clear()
    d = Dev(p.port, "GOOD")
    d.wait()
    d.c.subscribe("v1/devices/+/rpc/request/+", 1)
    closed_for(p, d, "not a ThingsBoard device topic")


def test_blynk_rules(proxies, broker):
    p = proxies(Blynk({"DEVTOKEN"}, template_id="TMPL1"))
    assert Dev(p.port, "device", "WRONG").wait() == 4
    assert Dev(p.port, "device", "DEVTOKEN", clean=False).wait() != 0
    assert any("clean sessions" in v for v in p.violations)
    p.violations.clear()
    d = Dev(p.port, "device", "DEVTOKEN")
    assert d.wait() == 0
    d.c.subscribe("downlink/#", 1)
    d.pub("info/mcu", b'{"tmpl":"TMPL1","type":"TMPL1","ver":"1","build":"x","rxbuff":1024}')
    d.pub("ds/Temperature", b"21.5")
    d.pub("batch_ds", b'{"a":1,"b":2}')
    now = int(time.time() * 1000)
    d.pub("ds/T/timestamped_batch", b"[[%d,1],[%d,2]]" % (now - 29 * 86400 * 1000, now))
    assert p.violations == []  # the last PUBACK came: all before it was judged (Dev.pub)
    d.c.subscribe("downlink/+/x", 1)
    closed_for(p, d, "'+' is not allowed")
    for topic, payload, why in (("ds/T", b"x" * 1100, "over Blynk's 1024"),
                                ("telemetry", b"1", "not a Blynk device-API topic"),
                                ("info/mcu", b'{"ver":"1","rxbuff":1024}', "template id"),
                                ("ds/T/timestamped_batch", b"[[%d,1]]" % (now - 32 * 86400 * 1000), "a month old"),
                                ("ds/T/timestamped_batch", b"[[%d,1]]" % (now + 32 * 86400 * 1000), "a month old")):
        p.violations.clear()
        d = Dev(p.port, "device", "DEVTOKEN")
        d.wait()
        d.pub(topic, payload, qos=0)
        closed_for(p, d, why)


def test_blynk_rules_for_what_is_not_a_reading(proxies):
    # uplink.cloud's topics: events, widget properties, metadata reads, get/ds/all
    p = proxies(Blynk({"DEVTOKEN"}))
    d = Dev(p.port, "device", "DEVTOKEN")
    assert d.wait() == 0
    d.pub("event/door_open", "front door \u00e9".encode())
    d.pub("event/door_open", b"")  # the event's own description
    d.pub("ds/Switch/prop/color", b"#23C48E")
    d.pub("get/meta", b"Serial Number")
    d.pub("get/ds/all", b"")
    assert p.violations == []  # the last PUBACK came: all before it was judged (Dev.pub)
    for topic, payload, why in (("event/door_open", b"\xff\xfe", "not UTF-8 text"),
                                ("ds/Switch/prop/color", b'{"c":1}', "takes plain text"),
                                ("ds/Switch/prop", b"x", "not a Blynk device-API topic"),
                                ("get/meta", b"", "must name the metadata field"),
                                ("get/ds/all", b"Switch", "empty payload")):
        p.violations.clear()
        d = Dev(p.port, "device", "DEVTOKEN")
        d.wait()
        d.pub(topic, payload, qos=0)
        closed_for(p, d, why)


def test_thingsboard_requests_the_device_makes(proxies):
    # client-side RPC, attribute requests, claiming, client attributes: the documented shapes
    # pass, others close the connection
    p = proxies(ThingsBoard({"GOOD": "device"}))
    d = Dev(p.port, "GOOD")
    assert d.wait() == 0
    d.pub("v1/devices/me/rpc/request/7", b'{"method":"getWeather","params":{"city":"Oslo"}}')
    d.pub("v1/devices/me/attributes/request/8", b'{"clientKeys":"a,b","sharedKeys":"setpoint"}')
    d.pub("v1/devices/me/claim", b'{"secretKey":"s","durationMs":60000}')
    d.pub("v1/devices/me/attributes", b'{"heating":true}')
    assert p.violations == []  # the last PUBACK came: all before it was judged (Dev.pub)
    for topic, payload, why in (("v1/devices/me/rpc/request/x", b'{"method":"m"}', "not a ThingsBoard"),
                                ("v1/devices/me/rpc/request/9", b'{"params":{}}', "needs a method"),
                                ("v1/devices/me/attributes/request/9", b'{"sharedKeys":["a"]}', "comma-separated"),
                                ("v1/devices/me/claim", b'{"durationMs":1}', "needs secretKey"),
                                ("v1/devices/me/attributes", b"[1]", "must be a JSON object")):
        p.violations.clear()
        d = Dev(p.port, "GOOD")
        d.wait()
        d.pub(topic, payload, qos=0)
        closed_for(p, d, why)


def test_blynk_gateway_and_redirect(proxies):
    p = proxies(Blynk(gateways={"GW": ["tokA", "tokB"]}))
    assert Dev(p.port, "device", "GW").wait() == 4
    d = Dev(p.port, "mgmt_device", "GW")
    assert d.wait() == 0
    d.c.subscribe("dev/tokA/downlink/#", 1)
    d.pub("dev/tokB/ds/T", b"1")
    d.pub("dev/tokA/info/mcu", b'{"ver":"1","build":"x","rxbuff":1024}')
    assert p.violations == []  # the last PUBACK came: all before it was judged (Dev.pub)
    d.pub("dev/tokZ/ds/T", b"1", qos=0)
    closed_for(p, d, "not dev/<token>/")
    # "not the token used for your Gateway API connection" (mqtt-gateway-api)
    for act in (lambda d: d.c.subscribe("dev/GW/downlink/#", 1), lambda d: d.pub("dev/GW/ds/T", b"1", qos=0)):
        p.violations.clear()
        d = Dev(p.port, "mgmt_device", "GW")
        d.wait()
        act(d)
        closed_for(p, d, "not dev/<token>/")
    # a gateway session addresses nothing unprefixed
    for act in (lambda d: d.c.subscribe("downlink/#", 1), lambda d: d.pub("ds/T", b"1", qos=0)):
        p.violations.clear()
        d = Dev(p.port, "mgmt_device", "GW")
        d.wait()
        act(d)
        closed_for(p, d, "not dev/<token>/")
    p.violations.clear()
    p.redirect = "mqtt://elsewhere:1883"
    d = Dev(p.port, "mgmt_device", "GW")
    d.wait()
    end = time.monotonic() + 5
    while not d.msgs and time.monotonic() < end:
        time.sleep(0.05)
    assert d.msgs == [("downlink/redirect", b"mqtt://elsewhere:1883")]


def test_blynk_oauth_gateway_login_and_booleans(proxies):
    p = proxies(Blynk(oauth={"oc-1": ("sec", ["tokA"])}, booleans={"Power"}))
    assert Dev(p.port, "oc-1", "wrong").wait() == 4
    d = Dev(p.port, "oc-1", "sec")
    assert d.wait() == 0
    d.c.subscribe("dev/tokA/downlink/#", 1)
    d.pub("dev/tokA/batch_ds", b'{"Power":true,"T":1}')
    assert p.violations == []  # the last PUBACK came: all before it was judged (Dev.pub)
    d.pub("dev/tokA/batch_ds", b'{"Power":1}', qos=0)
    closed_for(p, d, "not true/false")


def test_weightron_rules(proxies):
    p = proxies(Weightron("app1", {"T1"}))
    assert Dev(p.port, "app1", "OLD").wait() == 4
    assert Dev(p.port, "someone", "T1").wait() == 5
    p.violations.clear()
    d = Dev(p.port, "app1", "T1")
    assert d.wait() == 0
    d.pub("app1/devices/d1", b'{"$timestamp":"2026-01-01T12:00:00Z","$native":{"w":1}}')
    assert p.violations == []  # the last PUBACK came: all before it was judged (Dev.pub)
    d.pub("app1/devices/d1", b'{"$timestamp":"yesterday","$native":{}}', qos=0)
    closed_for(p, d, "not ISO 8601")
    p.violations.clear()
    d = Dev(p.port, "app1", "T1")
    d.wait()
    d.pub("app2/devices/d1", b'{"$native":{}}', qos=0)
    closed_for(p, d, "not app1/devices")


def test_biotz_rules(proxies):
    p = proxies(Biotz("c1", {"d1": "pw"}))
    assert Dev(p.port, "d1", "nope").wait() == 4
    d = Dev(p.port, "d1", "pw")
    assert d.wait() == 0
    d.c.subscribe("biotz/1/0/c1/d1/subscribe/action/+", 1)
    d.c.subscribe("biotz/1/0/c1/d1/subscribe/firmware/update", 1)
    d.pub("biotz/1/0/c1/d1/publish/data/telemetry", b'[{"timestamp":"2026-01-01T12:00:00.5Z","t":1},{"t":2}]')
    assert p.violations == []  # the last PUBACK came: all before it was judged (Dev.pub)
    d.pub("biotz/1/0/c1/d1/publish/data/telemetry", b'{"timestamp":"2026-01-01 12:00","t":1}', qos=0)
    closed_for(p, d, "RFC 3339")
    p.violations.clear()
    d = Dev(p.port, "d1", "pw")
    d.wait()
    d.pub("biotz/1/0/c1/d1/publish/data/telemetry", b'{"t":{"nested":1}}', qos=0)
    closed_for(p, d, "flat")
    p.violations.clear()
    d = Dev(p.port, "d1", "pw")
    d.wait()
    d.c.subscribe("biotz/1/0/c1/d2/subscribe/action/+", 1)
    closed_for(p, d, "not this device's")


def test_directions_are_kept_apart(proxies, broker):
    """The device's own publish never comes back to it; the cloud reads up/ and writes down/."""
    p = proxies(ThingsBoard({"GOOD": "device"}))
    cloud = Cloud(broker.ports["mqtt"])
    try:
        d = Dev(p.port, "GOOD")
        d.wait()
        d.subscribe("v1/devices/me/attributes")
        d.pub("v1/devices/me/attributes", b'{"board":"esp32"}')
        cloud.wait(lambda t, _: t == "v1/devices/me/attributes")
        # the sentinel: mosquitto routed the device's publish (an echo queued on the device's
        # connection) before the cloud got it and sent this, and writes a connection's
        # messages in the order it routed them
        cloud.send("v1/devices/me/attributes", {"mode": "eco"})
        down = ("v1/devices/me/attributes", b'{"mode": "eco"}')
        end = time.monotonic() + 5
        while down not in d.msgs and time.monotonic() < end:
            time.sleep(0.05)
        assert d.msgs == [down]
        assert p.violations == []
    finally:
        cloud.close()


# -- every rule cites the platform's documentation (or says it is an assumption) ----------
def _profiles_tree():
    import ast
    from pathlib import Path

    path = Path(__file__).with_name("broker_profiles.py")
    return ast.parse(path.read_text()), ast


def test_every_declared_rule_cites_a_page_or_is_marked_an_assumption():
    from tests.integration.broker_profiles import RULES

    assert RULES
    for name, rule in RULES.items():
        assert len(rule.says) > 20, f"{name}: say what the page says (or why it is assumed)"
        if rule.assumption:
            continue
        assert rule.source and rule.source.startswith("https://"), f"{name}: no documentation URL"


def test_every_violation_and_refusal_names_a_declared_rule():
    from tests.integration import broker_profiles as bp

    tree, ast = _profiles_tree()
    used = set()

    def text_outside_broke(node):
        # a violation written as bare text, not through broke(rule, ...)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "broke":
            return False
        if isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            return True
        if isinstance(node, ast.IfExp):
            return text_outside_broke(node.body) or text_outside_broke(node.orelse)
        if isinstance(node, ast.BoolOp):
            return any(text_outside_broke(v) for v in node.values)
        return False

    checked = 0
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if fn.name in ("check_subscribe", "check_publish", "_tb_telemetry_item", "_upstream", "_client"):
            for node in ast.walk(fn):
                if isinstance(node, ast.Return) and node.value is not None:
                    assert not text_outside_broke(node.value), f"{fn.name} line {node.lineno}: uncited violation"
                    checked += 1
                if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "why" for t in node.targets):
                    assert not text_outside_broke(node.value), f"{fn.name} line {node.lineno}: uncited violation"
        for node in ast.walk(fn):
            if isinstance(node, ast.Call):
                f = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                if f == "Refuse":
                    rule = node.args[1]
                    names = [rule.body, rule.orelse] if isinstance(rule, ast.IfExp) else [rule]
                    for r in names:
                        assert isinstance(r, ast.Constant) and r.value in bp.RULES, \
                            f"line {node.lineno}: Refuse without a declared rule"
                        used.add(r.value)
                elif f == "broke" and isinstance(node.args[0], ast.Constant):
                    assert node.args[0].value in bp.RULES, f"line {node.lineno}: rule {node.args[0].value} undeclared"
                    used.add(node.args[0].value)
                elif f == "_violation":
                    arg = node.args[1]  # broke(...), or `why`, whose assignments are checked above
                    assert (isinstance(arg, ast.Call) and getattr(arg.func, "id", None) == "broke") or \
                        getattr(arg, "id", None) == "why", f"line {node.lineno}: violation without a rule"
    assert checked > 20
    for cls in (bp.ThingsBoard, bp.Blynk, bp.Weightron, bp.Biotz):
        for attr in ("qos_rule", "json_rule"):
            assert getattr(cls, attr) in bp.RULES
    # a declared rule nothing names is a stale one: every rule appears in the checks' code
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.Constant) and node.value in bp.RULES:
                    used.add(node.value)
    assert set(bp.RULES) - used == set(), "declared rules no profile enforces"


def test_a_violation_says_which_rule_it_broke():
    from tests.integration.broker_profiles import RULES, Session, ThingsBoard

    s = Session("T", "c", "device")
    why = ThingsBoard({"T": "device"}).check_publish(s, "v1/devices/me/telemetry", b'{"ts":1,"values":{}}', 1, False)
    rule = why.rsplit("[", 1)[1].rstrip("]")
    assert rule == "tb.telemetry" and RULES[rule].source.startswith("https://thingsboard.io/")


def test_thingsboard_takes_the_three_documented_forms_of_mqtt_basic_credentials():
    # thingsboard.io/docs/user-guide/basic-mqtt/: client id only (any username/password),
    # username and password (any client id, password optional), or all three
    from tests.integration.broker_profiles import Connect, Refuse, ThingsBoard

    prof = ThingsBoard({"tok": "device"}, basic=[{"client_id": "only-id"}, {"username": "u", "password": "p"},
                                                 {"username": "nopw"},
                                                 {"client_id": "c3", "username": "u3", "password": "p3"}])

    def connect(cid, user, pw):
        return prof.connect(Connect(cid, user, pw.encode() if pw is not None else None, True, 60, "MQTT", 4))

    assert connect("only-id", "anything", "at-all").role == "device"
    assert connect("any", "u", "p").username == "u"
    assert connect("any", "nopw", None).username == "nopw"
    assert connect("c3", "u3", "p3").username == "u3"
    assert connect("x", "tok", None).username == "tok"  # access tokens as before
    for cid, user, pw in (("other", "u3", "p3"), ("c3", "u3", "wrong"), ("any", "u", "wrong")):
        with pytest.raises(Refuse) as e:
            connect(cid, user, pw)
        assert e.value.code == 4 and e.value.rule == "tb.basic" and not e.value.violation
