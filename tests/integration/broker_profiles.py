"""Broker profiles: each cloud's MQTT rules, enforced in front of the mosquitto test broker.

mosquitto cannot express these rules (ThingsBoard's token-in-username with no password,
Blynk's "only downlink/... subscriptions, no +", topic allow-lists per credential, payload
shapes and size limits), so a small asyncio proxy sits between the device and mosquitto:

    firmware --mqtt--> ProfileProxy (parses CONNECT/SUBSCRIBE/PUBLISH, applies the profile)
                       --byte for byte--> mosquitto <-- paho "cloud side" of the test

- CONNECT: the profile decides; refused -> the proxy answers CONNACK with the profile's code
  itself and closes. Every CONNECT is recorded in `proxy.connects`.
- SUBSCRIBE / PUBLISH from the device: a forbidden topic, QoS, payload shape or size is a
  violation: recorded in `proxy.violations` and the connection is closed (as the real
  clouds do). Tests end with `assert proxy.violations == []`.
- Everything else, both ways, is forwarded unchanged. Device PUBLISHes are recorded in
  `proxy.published` as (username, topic, payload).
- Blynk's broker may send `downlink/redirect` right after CONNACK without a subscription:
  `proxy.redirect = "mqtt://..."` makes this proxy do exactly that on every connect.
- Directions are kept apart, as in the clouds (where the device's own publish on
  v1/devices/me/attributes never comes back to it as a shared-attribute update): what the
  device publishes lands on mosquitto under `up/<topic>`, its subscriptions are made to
  `down/<topic>`, and `down/` is taken off again on the way to the device. The test's
  cloud side (`Cloud`) reads `up/...` and writes `down/...`.

See docs/platforms.md ("How the tests hold the firmware to each cloud's rules").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from dataclasses import dataclass, field

CONNECT, CONNACK, PUBLISH, SUBSCRIBE = 1, 2, 3, 8


# -- MQTT 3.1.1 packet parsing -----------------------------------------------------------
async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes, bytes]:
    """(first byte, whole packet bytes, body)."""
    first = await reader.readexactly(1)
    header = bytearray(first)
    mult, length = 1, 0
    for _ in range(4):
        b = (await reader.readexactly(1))[0]
        header.append(b)
        length += (b & 0x7F) * mult
        if not b & 0x80:
            break
        mult *= 128
    else:
        raise ValueError("malformed remaining length")
    body = await reader.readexactly(length) if length else b""
    return first[0], bytes(header) + body, body


def _str(buf: bytes, i: int) -> tuple[bytes, int]:
    n = int.from_bytes(buf[i : i + 2], "big")
    return buf[i + 2 : i + 2 + n], i + 2 + n


@dataclass
class Connect:
    client_id: str
    username: str | None
    password: bytes | None
    clean: bool
    keepalive: int
    protocol: str
    level: int
    will_topic: str | None = None


def parse_connect(body: bytes) -> Connect:
    name, i = _str(body, 0)
    level, flags = body[i], body[i + 1]
    keepalive = int.from_bytes(body[i + 2 : i + 4], "big")
    i += 4
    cid, i = _str(body, i)
    will_topic = None
    if flags & 0x04:
        wt, i = _str(body, i)
        will_topic = wt.decode()
        _, i = _str(body, i)
    user = pw = None
    if flags & 0x80:
        u, i = _str(body, i)
        user = u.decode()
    if flags & 0x40:
        pw, i = _str(body, i)
    return Connect(cid.decode(), user, pw, bool(flags & 0x02), keepalive, name.decode(), level, will_topic)


def parse_publish(first: int, body: bytes) -> tuple[str, bytes, int, bool]:
    qos = (first >> 1) & 3
    topic, i = _str(body, 0)
    if qos:
        i += 2
    return topic.decode(), body[i:], qos, bool(first & 1)


def parse_subscribe(body: bytes) -> list[tuple[str, int]]:
    i, out = 2, []
    while i < len(body):
        t, i = _str(body, i)
        out.append((t.decode(), body[i]))
        i += 1
    return out


def publish_packet(topic: str, payload: bytes, first: int = 0x30, pid: bytes = b"") -> bytes:
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t + pid + payload
    return bytes([first]) + _varint(len(body)) + body


def retopic_publish(first: int, body: bytes, fn) -> bytes:
    """The same PUBLISH with its topic replaced by fn(topic)."""
    qos = (first >> 1) & 3
    topic, i = _str(body, 0)
    pid = body[i : i + 2] if qos else b""
    rest = body[i + (2 if qos else 0) :]
    return publish_packet(fn(topic.decode()), rest, first, pid)


def subscribe_packet(first: int, body: bytes, fn) -> bytes:
    out = bytearray(body[:2])
    for topic, qos in parse_subscribe(body):
        t = fn(topic).encode()
        out += len(t).to_bytes(2, "big") + t + bytes([qos])
    return bytes([first]) + _varint(len(out)) + bytes(out)


UP, DOWN = "up/", "down/"


def _unsubscribe_packet(first: int, body: bytes) -> bytes:
    out, i = bytearray(body[:2]), 2
    while i < len(body):
        t, i = _str(body, i)
        t = (DOWN + t.decode()).encode()
        out += len(t).to_bytes(2, "big") + t
    return bytes([first]) + _varint(len(out)) + bytes(out)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


# -- rules: what each profile enforces, and where the platform documents it ----------------
@dataclass(frozen=True)
class Rule:
    """One rule a profile enforces. `source`: the documentation page it comes from; `says`:
    what that page says, in our words. A rule with no page behind it is an `assumption`
    (`says` then tells why we keep it). tests/integration/test_platform_profiles.py fails on a
    rule without either, and on a violation that names no declared rule."""

    says: str
    source: str | None = None
    assumption: bool = False


_MQTT = "https://docs.oasis-open.org/mqtt/mqtt/v3.1.1/os/mqtt-v3.1.1-os.html"
_TB = "https://thingsboard.io/docs/reference/mqtt-api/"
_TB_GW = "https://thingsboard.io/docs/reference/gateway-mqtt-api/"
_TB_PROV = "https://thingsboard.io/docs/user-guide/device-provisioning/"
_TB_CLAIM = "https://thingsboard.io/docs/user-guide/claiming-devices/"
_TB_OTA = "https://thingsboard.io/docs/user-guide/ota-updates/"
_TB_CONF = "https://thingsboard.io/docs/user-guide/install/config/"
_TB_TENANT = "https://thingsboard.io/docs/user-guide/tenant-profiles/"
_TB_BASIC = "https://thingsboard.io/docs/user-guide/basic-mqtt/"
_TB_PAAS = "https://thingsboard.io/docs/paas/subscription/"
_BL_AUTH = "https://docs.blynk.io/en/blynk.cloud-mqtt-api/device-mqtt-api/authentication"
_BL_TOPICS = "https://docs.blynk.io/en/blynk.cloud-mqtt-api/device-mqtt-api/topic-structure"
_BL_DS = "https://docs.blynk.io/en/blynk.cloud-mqtt-api/device-mqtt-api/datastreams"
_BL_GW = "https://docs.blynk.io/en/blynk.cloud-mqtt-api/mqtt-gateway-api"
_BL_PROPS = "https://docs.blynk.io/en/blynk.cloud-mqtt-api/device-mqtt-api/widget-properties"
_WT_TOPICS = "https://docs.weightron.cloud/docs-mqtt/TopicStructure"
_WT_USE = "https://docs.weightron.cloud/docs-mqtt/UsingTheService"
_WT_ACCESS = "https://docs.weightron.cloud/docs-mqtt/RequestingAccess"
_BIOTZ = ("Biotz's documentation ('Publishing Device data', the device credentials file); its "
          "page addresses are not in our records, only its content (PLATFORMS.md)")

RULES: dict[str, Rule] = {
    # MQTT itself and this proxy
    "mqtt.connect_first": Rule("The first packet a client sends must be CONNECT, and only one "
                               "CONNECT per connection [MQTT-3.1.0-1, -2].", _MQTT),
    "proxy.mqtt311": Rule("The proxy parses MQTT 3.1.1 only. All four clouds accept 3.1.1 (ThingsBoard "
                          "and Blynk also 5); a device speaking 5 would need a v5 parser here.",
                          assumption=True),
    # ThingsBoard
    "tb.token_username": Rule("Access-token devices put the token in the CONNECT username.", _TB),
    "tb.basic": Rule("A device whose credential type is MQTT Basic connects with the client id only (any username "
                     "and password), or the username and password (any client id; the password optional), or all "
                     "three; credentials that match none are refused.", _TB_BASIC),
    "tb.no_password": Rule("The docs' access-token CONNECT has a username and nothing else; ThingsBoard "
                           "ignores a password there, so one is most likely the token in the wrong "
                           "field.", assumption=True),
    "tb.unknown_token": Rule("ThingsBoard answers an unknown token with CONNACK 5 (not authorised); the "
                             "docs do not name the code.", assumption=True),
    "tb.qos": Rule("ThingsBoard's broker supports QoS 0 and 1 only.", _TB),
    "tb.no_retain": Rule("ThingsBoard's device API has no retained messages; a retained publish means the "
                         "device expects something the platform does not do.", assumption=True),
    "tb.max_payload": Rule("The MQTT transport refuses messages over transport.mqtt.netty.max_payload_size, "
                           "65536 bytes unless the admin changes it.", _TB_CONF),
    "tb.rate_limits": Rule("The tenant profile sets per-device transport rate limits as \"N:S,N:S\" (at most N "
                           "per S seconds, every window at once): messages, telemetry messages, telemetry data "
                           "points, a data point being one key-value of a telemetry or attribute message (" + _TB_PAAS
                           + "). The transport keeps a greedily refilled token bucket per window and device "
                           "(across connections), a telemetry or attribute message taking one telemetry message "
                           "and its key-values, any other message (the session's open, an attribute or RPC "
                           "subscription, a request, a reply) one message; over a limit it closes the connection "
                           "(the docs do not say what happens: thingsboard/thingsboard common/transport "
                           "DefaultTransportRateLimitService and MqttTransportHandler).", _TB_TENANT),
    "tb.session_limits": Rule("A device asks its session's limits with the client-side RPC getSessionLimits; the "
                              "MQTT transport answers it itself (maxPayloadSize, maxInflightMessages, rateLimits), "
                              "not counted against the rate limits. The RPC guide does not list it: "
                              "thingsboard/thingsboard MqttTransportHandler.onGetSessionLimitsRpc.",
                              assumption=True),
    "tb.provision": Rule("A device provisions itself by connecting with username 'provision', subscribing "
                         "/provision/response and publishing deviceName, provisionDeviceKey and "
                         "provisionDeviceSecret to /provision/request.", _TB_PROV),
    "tb.topics": Rule("A device publishes to v1/devices/me/telemetry, .../attributes, "
                      ".../attributes/request/$id, .../rpc/request/$id, .../rpc/response/$id and subscribes "
                      "v1/devices/me/attributes, .../attributes/response/+, .../rpc/request/+, "
                      ".../rpc/response/+.", _TB),
    "tb.fw_topics": Rule("Firmware chunks are asked on v2/fw/request/$id/chunk/$n and arrive on "
                         "v2/fw/response/+/chunk/+.", _TB_OTA),
    "tb.claim": Rule("Claiming: publish {\"secretKey\": text, \"durationMs\": ms} to v1/devices/me/claim.",
                     _TB_CLAIM),
    "tb.gateway_topics": Rule("A gateway device publishes v1/gateway/connect, disconnect, telemetry, "
                              "attributes, attributes/request, rpc, claim and subscribes v1/gateway/rpc, "
                              "v1/gateway/attributes, v1/gateway/attributes/response.", _TB_GW),
    "tb.telemetry": Rule("Telemetry is an object of key-values, or {\"ts\": unix ms, \"values\": {...}}, "
                         "or an array of those.", _TB),
    "tb.json": Rule("Telemetry, attributes, RPC and provisioning payloads are JSON.", _TB),
    "tb.attributes": Rule("Client attributes are published as one JSON object of key-values.", _TB),
    "tb.ota_names": Rule("fw_title/fw_version/fw_checksum... are the shared attributes that announce an "
                         "OTA package; the device reports what it runs and how an update goes as telemetry "
                         "(current_fw_title, current_fw_version, fw_state: the guide's \"Update process\"; "
                         "its firmware dashboard reads them there). Neither belongs in client attributes.",
                         _TB_OTA),
    "tb.attr_request": Rule("An attribute request is {\"clientKeys\": \"a,b\", \"sharedKeys\": \"c,d\"}: "
                            "comma-separated names.", _TB),
    "tb.client_rpc": Rule("A client-side RPC request has a method (and params).", _TB),
    "tb.gateway_shapes": Rule("Gateway telemetry is {device: [readings]}; connect/disconnect carry "
                              "{\"device\": name}; an RPC reply carries device, id and data; attributes are "
                              "{device: {key: value}}; an attribute request is {\"id\": n, \"device\": name, "
                              "\"client\": true|false, \"key\": k} (or \"keys\": [...]); a claim is {device: "
                              "{\"secretKey\": text, \"durationMs\": ms}}.", _TB_GW),
    # Blynk
    "blynk.clean": Rule("Only clean sessions are supported.", _BL_AUTH),
    "blynk.client_id": Rule("The client id is empty or any UTF-8 text up to 64 characters.", _BL_AUTH),
    "blynk.device_login": Rule("Device API: username 'device', password the device's auth token; bad "
                               "credentials get CONNACK 4.", _BL_AUTH),
    "blynk.gateway_login": Rule("Gateway API: username 'mgmt_device' with the gateway device's own token, "
                                "or the OAuth client's Client ID as username and its Client Secret as "
                                "password.", _BL_GW),
    "blynk.downlink_only": Rule("The device subscribes to downlink messages (downlink/# as a rule).",
                                _BL_AUTH),
    "blynk.no_plus": Rule("'+' in a subscription is refused (PLATFORMS.md says so; the docs show downlink/# "
                          "and downlink/ds/# only).", assumption=True),
    "blynk.qos": Rule("Blynk publishes with QoS 0 or 1 (downlink/ping is 'always QoS 1'); QoS 2 is not "
                      "mentioned anywhere.", assumption=True),
    "blynk.max_message": Rule("1024 bytes per message: what PLATFORMS.md and Blynk's samples (rxbuff 1024) "
                              "use; the docs state no uplink limit.", assumption=True),
    "blynk.gateway_prefix": Rule("On a Gateway API session every device is addressed by prefixing the "
                                 "device-API topic with dev/<its token>/ (no wildcard in the token), the "
                                 "target device's token, \"not the token used for your Gateway API "
                                 "connection\".", _BL_GW),
    "blynk.topics": Rule("Uplink topics: info/mcu, ds/<Datastream>, ds/<Datastream>/timestamped_batch, "
                         "ds/<Datastream>/prop/<property>, batch_ds, event/<code>, get/ds, get/ds/all, "
                         "get/meta, get/utc/all/json.", _BL_TOPICS),
    "blynk.prop": Rule("ds/<Datastream>/prop/<property> sets a widget property; the value is plain text "
                       "(123, hello).", _BL_PROPS),
    "blynk.meta": Rule("get/meta asks metadata values; the answer comes on downlink/meta/<field>. The payload "
                       "names the field(s) as text, as get/ds does for datastreams (Blynk's own clients "
                       "send \"Serial,Time Zone\"; the page does not show a payload).", _BL_TOPICS),
    "blynk.get_ds_all": Rule("get/ds/all asks every datastream's current value; payload empty.", _BL_DS),
    "blynk.event_text": Rule("event/<event code> logs one of the template's events; its payload, the "
                             "description, is plain text: what Blynk.logEvent(code, description) sends. The "
                             "MQTT page lists the topic without showing a payload.", assumption=True),
    "blynk.json": Rule("batch_ds, timestamped_batch and info/mcu carry JSON.", _BL_DS),
    "blynk.batch_ds": Rule("batch_ds takes one JSON object {datastream name: value}.", _BL_DS),
    "blynk.boolean": Rule("Values must match the datastream's type: true or false for a Boolean "
                          "datastream.", _BL_DS),
    "blynk.timestamped": Rule("timestamped_batch takes [[timestamp in ms, value], ...].", _BL_DS),
    "blynk.timestamped_age": Rule("timestamped_batch points are no older than 1 month, and at most 1 month "
                                  "\"in the future\" (a month taken as 31 days).", _BL_DS),
    "blynk.ds_text": Rule("ds/<Datastream> takes the value as plain text (123, hello, 3.14); a multi-value's "
                          "items are separated by a 0x00 byte.", _BL_DS),
    "blynk.info_mcu": Rule("After every clean connect the device publishes info/mcu with tmpl (the Template "
                           "ID), ver, build, type and rxbuff (its MQTT receive buffer in bytes).", _BL_AUTH),
    # Weightron
    "wt.login": Rule("MQTT over secure WebSocket with the Application ID as username and a current access "
                     "token as password.", _WT_USE),
    "wt.qos": Rule("QoS levels are not documented; the firmware uses 0 and 1.", assumption=True),
    "wt.write_permission": Rule("MQTT permissions come in groups (Devices & Hubs, Processes, Documents), "
                                "each read and/or write, off by default and granted through the "
                                "reseller: publishing needs the Devices write permission. How the broker "
                                "refuses is not documented (modelled as the connection closed).",
                                _WT_ACCESS),
    "wt.topics": Rule("Topics are <application_id>/devices/<device_id> and <application_id>/hubs/<hub_id> "
                      "(and .../#).", _WT_TOPICS),
    "wt.payload": Rule("A device value is a JSON object; keys starting with $ are reserved ($timestamp, an "
                       "ISO date string; $raw; $native).", _WT_TOPICS),
    # Biotz
    "biotz.login": Rule("MQTT username = the Device ID, password = the device Password from the "
                        "credentials file. " + _BIOTZ, assumption=True),
    "biotz.qos": Rule("QoS levels are not documented; the firmware uses 0 and 1.", assumption=True),
    "biotz.topics": Rule("Publish to biotz/1/0/<customer>/<device>/publish/data/<message type>; subscribe "
                         ".../subscribe/action/<type> and .../subscribe/firmware/update. " + _BIOTZ,
                         assumption=True),
    "biotz.payload": Rule("Flat JSON objects (or an array of them) matching the message type's schema; "
                          "timestamps in epoch ms or RFC 3339 UTC with Z. " + _BIOTZ, assumption=True),
}


def broke(rule: str, detail: str) -> str:
    """A violation of the declared `rule`: its text names the rule."""
    if rule not in RULES:
        raise KeyError(f"broker profile rule {rule!r} is not declared in RULES")
    return f"{detail} [{rule}]"


# -- profiles ----------------------------------------------------------------------------
class Refuse(Exception):
    """CONNECT refused with this CONNACK return code under `rule` (and, if `violation`,
    recorded)."""

    def __init__(self, code: int, rule: str, why: str, violation: bool = False):
        super().__init__(broke(rule, why))
        self.code = code
        self.rule = rule
        self.why = why
        self.violation = violation


@dataclass
class Session:
    username: str | None
    client_id: str
    role: str
    data: dict = field(default_factory=dict)


def _json(payload: bytes):
    try:
        return json.loads(payload)
    except ValueError:
        raise AssertionError(f"payload is not JSON: {payload[:60]!r}") from None


class Profile:
    name = "plain"
    max_qos = 1
    qos_rule = "tb.qos"  # the rule behind max_qos, per profile
    json_rule = "tb.json"  # the rule a payload that is not JSON breaks

    def connect(self, c: Connect) -> Session:
        return Session(c.username, c.client_id, "any")

    def check_subscribe(self, s: Session, topic: str, qos: int) -> str | None:
        return None

    def check_publish(self, s: Session, topic: str, payload: bytes, qos: int, retain: bool) -> str | None:
        return None

    def answer(self, s: Session, topic: str, payload: bytes) -> list[tuple[str, bytes]] | None:
        """Messages the cloud answers a device publish with itself, instead of passing it on."""
        return None


class Buckets:
    """One ThingsBoard rate limit "N:S,N:S": a greedily refilled token bucket per window, full
    at first (TbRateLimits); take(k) takes k from every window, or nothing (False)."""

    def __init__(self, spec: str):
        self.w = []
        for part in spec.split(","):
            n, sec = (int(x) for x in part.split(":"))
            self.w.append([n, n / sec, float(n)])
        self.t = time.monotonic()

    def take(self, k: int) -> bool:
        now = time.monotonic()
        for w in self.w:
            w[2] = min(w[0], w[2] + (now - self.t) * w[1])
        self.t = now
        if any(w[2] < k for w in self.w):
            return False
        for w in self.w:
            w[2] -= k
        return True


def tb_data_points(topic: str, doc) -> int:
    """Key-values of a telemetry or attribute message, as ThingsBoard counts them (a nested
    object is one JSON value)."""
    if topic in ("v1/devices/me/telemetry", "v1/devices/me/attributes"):
        items = doc if isinstance(doc, list) else [doc]
        return sum(len(i["values"]) if isinstance(i, dict) and "values" in i else len(i) for i in items
                   if isinstance(i, dict))
    if topic in ("v1/gateway/telemetry", "v1/gateway/attributes") and isinstance(doc, dict):
        return sum(tb_data_points("v1/devices/me/telemetry", v) for v in doc.values())
    return 0


# ThingsBoard ----------------------------------------------------------------------------
_TB_ME_PUB = [r"v1/devices/me/telemetry", r"v1/devices/me/attributes", r"v1/devices/me/attributes/request/\d+",
              r"v1/devices/me/rpc/response/\d+", r"v1/devices/me/rpc/request/\d+", r"v1/devices/me/claim"]
_TB_FW_PUB = [r"v2/fw/request/\d+/chunk/\d+"]
_TB_GW_PUB = [r"v1/gateway/(connect|disconnect|telemetry|attributes|rpc|claim|attributes/request)"]
_TB_ME_SUB = ["v1/devices/me/attributes", "v1/devices/me/attributes/response/+", "v1/devices/me/rpc/request/+",
              "v1/devices/me/rpc/response/+"]
_TB_FW_SUB = ["v2/fw/response/+/chunk/+"]
_TB_GW_SUB = ["v1/gateway/rpc", "v1/gateway/attributes", "v1/gateway/attributes/response"]
_TB_OTA_SHARED = {"fw_title", "fw_version", "fw_checksum", "fw_checksum_algorithm", "fw_size", "fw_url"}
_TB_OTA_TELEMETRY = {"current_fw_title", "current_fw_version", "fw_state", "fw_error"}  # (_TB_OTA: telemetry)


class ThingsBoard(Profile):
    """Access token as username, no password, or MQTT Basic credentials (`basic`); `provision`
    (no password) for provisioning; rate limits and getSessionLimits (`rate_limits`);
    v1/... topics only; JSON shapes of telemetry/attributes/gateway; max payload. Every
    refusal names its rule in RULES."""

    name = "thingsboard"
    qos_rule = "tb.qos"
    answer_rule = "tb.session_limits"  # the rule behind answer()

    def __init__(self, tokens: dict[str, str] | None = None, *, provisioning: bool = False,
                 max_payload: int = 65536, rate_limits: dict[str, str] | None = None, max_inflight: int = 100,
                 basic: list[dict] | None = None):
        self.tokens = dict(tokens or {})  # token -> "device" | "gateway"
        # MQTT Basic credentials: {"client_id", "username", "password"}, each optional
        self.basic = list(basic or [])
        self.provisioning = provisioning
        self.max_payload = max_payload
        # {"messages": "N:S,...", "telemetryMessages": ..., "telemetryDataPoints": ...}: enforced,
        # and getSessionLimits is answered by the profile itself, as ThingsBoard's transport does
        self.rate_limits = rate_limits
        self.max_inflight = max_inflight
        self.buckets: dict[str, dict[str, Buckets]] = {}  # per device, across its connections
        self.data_points = 0  # telemetry data points taken in

    def _limit(self, s: Session, dp: int, what: str) -> str | None:
        if not self.rate_limits or s.role == "provision":
            return None
        b = self.buckets.setdefault(s.username or "", {k: Buckets(v) for k, v in self.rate_limits.items() if v})
        if dp:
            ok = all(k not in b or b[k].take(n) for k, n in (("telemetryMessages", 1), ("telemetryDataPoints", dp)))
            self.data_points += dp if ok else 0
        else:
            ok = "messages" not in b or b["messages"].take(1)
        return None if ok else broke("tb.rate_limits", f"{what} over the rate limits {self.rate_limits}")

    def _basic(self, c: Connect) -> dict | None:
        pw = c.password.decode() if c.password is not None else None
        for b in self.basic:
            if b.get("client_id") is not None and b["client_id"] != c.client_id:
                continue
            if b.get("username") is not None and (b["username"] != c.username or b.get("password") != pw):
                continue
            return b
        return None

    def connect(self, c: Connect) -> Session:
        b = self._basic(c)
        if b is not None:
            s = Session(b.get("username") or b.get("client_id"), c.client_id, b.get("role", "device"))
        elif c.password is not None:
            if self.basic:
                raise Refuse(4, "tb.basic", "no MQTT Basic credentials match")
            raise Refuse(4, "tb.no_password", "ThingsBoard access-token CONNECT carries no password", violation=True)
        elif c.username == "provision" and self.provisioning:
            return Session(c.username, c.client_id, "provision")
        elif c.username is None or c.username not in self.tokens:
            raise Refuse(5, "tb.token_username" if c.username is None else "tb.unknown_token", "unknown access token")
        else:
            s = Session(c.username, c.client_id, self.tokens[c.username])
        if self._limit(s, 0, "the session's open"):  # ThingsBoard: CONNACK "server unavailable" in 3.1.1
            raise Refuse(3, "tb.rate_limits", "session open over the messages rate limit", violation=True)
        return s

    def answer(self, s, topic, payload):
        if not self.rate_limits or not topic.startswith("v1/devices/me/rpc/request/"):
            return None
        try:
            method = json.loads(payload).get("method")
        except (ValueError, AttributeError):
            return None
        if method != "getSessionLimits":
            return None
        limits = {"maxPayloadSize": self.max_payload, "maxInflightMessages": self.max_inflight,
                  "rateLimits": self.rate_limits}
        return [("v1/devices/me/rpc/response/" + topic.rsplit("/", 1)[1], json.dumps(limits).encode())]

    def check_subscribe(self, s, topic, qos):
        if s.role == "provision":
            return None if topic == "/provision/response" else broke(
                "tb.provision", f"provisioning session subscribed {topic}")
        if topic in _TB_ME_SUB or topic in _TB_FW_SUB:
            # an attribute or RPC subscription is a message (ThingsBoard then leaves it unmade)
            if topic in ("v1/devices/me/attributes", "v1/devices/me/rpc/request/+"):
                return self._limit(s, 0, f"subscription to {topic}")
            return None
        if s.role == "gateway" and topic in _TB_GW_SUB:
            return None
        return broke(_tb_topic_rule(topic), f"subscription to {topic} is not a ThingsBoard device topic")

    def check_publish(self, s, topic, payload, qos, retain):
        if len(payload) > self.max_payload:
            return broke("tb.max_payload", f"payload of {len(payload)} bytes over the {self.max_payload}-byte "
                         f"limit on {topic}")
        if retain:
            return broke("tb.no_retain", f"retained publish to {topic}")
        if s.role == "provision":
            if topic != "/provision/request":
                return broke("tb.provision", f"provisioning session published to {topic}")
            doc = _json(payload)
            if set(doc) < {"deviceName", "provisionDeviceKey", "provisionDeviceSecret"}:
                return broke("tb.provision", "provision request without deviceName/provisionDeviceKey/"
                             f"provisionDeviceSecret: {doc}")
            return None
        if any(re.fullmatch(p, topic) for p in _TB_FW_PUB):
            return None
        if not any(re.fullmatch(p, topic) for p in _TB_ME_PUB + (_TB_GW_PUB if s.role == "gateway" else [])):
            return broke(_tb_topic_rule(topic), f"publish to {topic}: not a ThingsBoard {s.role} topic")
        doc = _json(payload)
        if topic.startswith("v1/devices/me/rpc/request/") and self.answer(s, topic, payload):
            return None  # getSessionLimits: answered by the transport, not rate-limited
        why = self._limit(s, tb_data_points(topic, doc), f"publish to {topic}")
        if why:
            return why
        if topic == "v1/devices/me/telemetry":
            for item in doc if isinstance(doc, list) else [doc]:
                why = _tb_telemetry_item(item)
                if why:
                    return why
        elif topic == "v1/devices/me/attributes":
            if not isinstance(doc, dict):
                return broke("tb.attributes", "client attributes must be a JSON object")
            clash = sorted(_TB_OTA_SHARED & set(doc))
            if clash:
                return broke("tb.ota_names", f"client attribute {clash} has the name of an OTA shared attribute")
            clash = sorted(_TB_OTA_TELEMETRY & set(doc))
            if clash:
                return broke("tb.ota_names", f"client attribute {clash}: ThingsBoard reads these as telemetry")
        elif topic == "v1/gateway/telemetry":
            if not isinstance(doc, dict) or not doc:
                return broke("tb.gateway_shapes", "gateway telemetry must be {device: [readings]}")
            for dev, items in doc.items():
                if not isinstance(items, list):
                    return broke("tb.gateway_shapes", f"gateway telemetry for {dev}: expected a list")
                for item in items:
                    why = _tb_telemetry_item(item)
                    if why:
                        return why
        elif topic in ("v1/gateway/connect", "v1/gateway/disconnect"):
            if not isinstance(doc, dict) or not isinstance(doc.get("device"), str):
                return broke("tb.gateway_shapes", f"{topic} needs {{\"device\": name}}")
        elif topic == "v1/gateway/rpc":
            if not isinstance(doc, dict) or not {"device", "id", "data"} <= set(doc):
                return broke("tb.gateway_shapes", "gateway RPC reply needs device, id and data")
        elif topic in ("v1/gateway/attributes", "v1/gateway/claim"):
            if not isinstance(doc, dict) or not doc or not all(isinstance(v, dict) and v for v in doc.values()):
                return broke("tb.gateway_shapes", f"{topic} takes {{device: {{...}}}}: {doc}")
            claims = doc.values() if topic == "v1/gateway/claim" else ()
            if not all(isinstance(v.get("secretKey"), str) and isinstance(v.get("durationMs", 0), int) for v in claims):
                return broke("tb.gateway_shapes", f"a gateway claim needs secretKey (text) and durationMs: {doc}")
        elif topic == "v1/gateway/attributes/request":
            keys = doc.get("keys", [doc.get("key")]) if isinstance(doc, dict) else None
            if not isinstance(doc, dict) or not isinstance(doc.get("id"), int) \
                    or not isinstance(doc.get("device"), str) or not isinstance(doc.get("client"), bool) \
                    or not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
                return broke("tb.gateway_shapes", f"a gateway attribute request needs id, device, client and key(s): "
                             f"{doc}")
        elif topic.startswith("v1/devices/me/rpc/request/"):
            if not isinstance(doc, dict) or not isinstance(doc.get("method"), str):
                return broke("tb.client_rpc", "client-side RPC needs a method")
        elif topic == "v1/devices/me/claim":
            if not isinstance(doc, dict) or not isinstance(doc.get("secretKey"), str) \
                    or not isinstance(doc.get("durationMs", 0), int):
                return broke("tb.claim", f"claiming request needs secretKey (text) and durationMs (ms): {doc}")
        elif topic.startswith("v1/devices/me/attributes/request/"):
            if not isinstance(doc, dict) or not doc or any(
                    k not in ("clientKeys", "sharedKeys") or not isinstance(v, str) for k, v in doc.items()):
                return broke("tb.attr_request", "attribute request takes clientKeys/sharedKeys as "
                             f"comma-separated text: {doc}")
        return None


def _tb_topic_rule(topic: str) -> str:
    if topic.startswith("v1/gateway/"):
        return "tb.gateway_topics"
    return "tb.fw_topics" if topic.startswith("v2/fw/") else "tb.topics"


def _tb_telemetry_item(item) -> str | None:
    if not isinstance(item, dict) or not item:
        return broke("tb.telemetry", f"telemetry item is not a non-empty object: {item!r}")
    if "ts" in item or "values" in item:
        if set(item) != {"ts", "values"} or not isinstance(item["ts"], int) or not isinstance(item["values"], dict):
            return broke("tb.telemetry", f"telemetry with ts must be {{\"ts\": ms, \"values\": {{...}}}}: {item!r}")
        if item["ts"] < 1_000_000_000_000:
            return broke("tb.telemetry", f"telemetry ts {item['ts']} is not epoch milliseconds")
    return None


# Blynk ----------------------------------------------------------------------------------
_BLYNK_PUB = [r"ds/[^/+#]+", r"ds/[^/+#]+/timestamped_batch", r"ds/[^/+#]+/prop/[^/+#]+", r"batch_ds",
              r"info/mcu", r"event/[^/+#]+", r"get/ds", r"get/ds/all", r"get/meta", r"get/utc/all/json"]
BLYNK_MAX_MESSAGE = 1024


class Blynk(Profile):
    """username `device` + device token password; gateway API: `mgmt_device` + the gateway's
    token, or an OAuth client's id + secret, every sub-device then addressed as dev/<token>/
    (never the connection's own token); clean session, client id <= 64; only downlink/...
    subscriptions; device-API topics only; Boolean datastreams (`booleans`) take true/false;
    info/mcu carries the device's template (`templates`: a sub-device token's own)."""

    name = "blynk"
    qos_rule = "blynk.qos"
    json_rule = "blynk.json"

    def __init__(self, tokens=(), gateways: dict[str, list[str]] | None = None, template_id: str | None = None,
                 oauth: dict[str, tuple[str, list[str]]] | None = None, booleans=(),
                 templates: dict[str, str] | None = None):
        self.tokens = set(tokens)
        self.gateways = dict(gateways or {})  # gateway token -> its sub-devices' tokens
        self.oauth = dict(oauth or {})  # OAuth client id -> (secret, the devices' tokens it reaches)
        self.template_id = template_id
        self.booleans = set(booleans)
        self.templates = dict(templates or {})  # device token -> its template id

    def connect(self, c: Connect) -> Session:
        if not c.clean:
            raise Refuse(2, "blynk.clean", "Blynk accepts clean sessions only", violation=True)
        if len(c.client_id) > 64:
            raise Refuse(2, "blynk.client_id", "client id longer than 64 characters", violation=True)
        pw = c.password.decode() if c.password is not None else None
        if c.username == "device" and pw in self.tokens:
            return Session(c.username, c.client_id, "device", {"prefixes": [""]})
        if c.username == "mgmt_device" and pw in self.gateways:
            # "The {deviceToken} in the topic must be the authentication token of the specific
            # device you intend to manage or update, not the token used for your Gateway API
            # connection" (docs.blynk.io/en/blynk.cloud-mqtt-api/mqtt-gateway-api)
            return Session(c.username, c.client_id, "gateway",
                           {"prefixes": [f"dev/{t}/" for t in self.gateways[pw]]})
        if c.username in self.oauth and pw == self.oauth[c.username][0]:
            return Session(c.username, c.client_id, "gateway",
                           {"prefixes": [f"dev/{t}/" for t in self.oauth[c.username][1]]})
        if c.username in ("device", "mgmt_device") or c.username in self.oauth:
            raise Refuse(4, "blynk.device_login" if c.username == "device" else "blynk.gateway_login", "bad token")
        raise Refuse(4, "blynk.device_login", f"username must be 'device', 'mgmt_device' or an OAuth client id, "
                     f"got {c.username!r}", violation=True)

    def _split(self, s: Session, topic: str) -> tuple[str | None, str]:
        for pre in sorted(s.data["prefixes"], key=len, reverse=True):
            if pre and topic.startswith(pre):
                return pre, topic[len(pre):]
        if "" in s.data["prefixes"] and not topic.startswith("dev/"):
            return "", topic
        return None, topic

    def check_subscribe(self, s, topic, qos):
        if "+" in topic:
            return broke("blynk.no_plus", f"subscription {topic}: '+' is not allowed")
        pre, rest = self._split(s, topic)
        if pre is None:
            return broke("blynk.gateway_prefix", f"subscription {topic}: not dev/<token>/ of a device this "
                         "session reaches")
        if not rest.startswith("downlink/"):
            return broke("blynk.downlink_only", f"subscription {topic}: only downlink/... is allowed")
        return None

    def check_publish(self, s, topic, payload, qos, retain):
        if len(topic.encode()) + len(payload) > BLYNK_MAX_MESSAGE:
            return broke("blynk.max_message", f"message of {len(topic) + len(payload)} bytes on {topic} over "
                         f"Blynk's {BLYNK_MAX_MESSAGE}")
        pre, rest = self._split(s, topic)
        if pre is None:
            return broke("blynk.gateway_prefix", f"publish to {topic}: not dev/<token>/ of a device this "
                         "session reaches")
        if not any(re.fullmatch(p, rest) for p in _BLYNK_PUB):
            return broke("blynk.topics", f"publish to {topic}: not a Blynk device-API topic")
        if rest == "batch_ds":
            doc = _json(payload)
            if not isinstance(doc, dict) or not doc:
                return broke("blynk.batch_ds", "batch_ds must be a non-empty JSON object")
            for k in self.booleans & set(doc):
                if not isinstance(doc[k], bool):
                    return broke("blynk.boolean", f"Boolean datastream {k} got {doc[k]!r}, not true/false")
        elif rest.endswith("/timestamped_batch"):
            doc = _json(payload)
            if not isinstance(doc, list) or not all(
                    isinstance(x, list) and len(x) == 2 and isinstance(x[0], int) and x[0] > 1_000_000_000_000
                    for x in doc):
                return broke("blynk.timestamped", f"timestamped_batch must be [[ms, value], ...]: {payload[:80]!r}")
            # "The timestamp should be sent in milliseconds and no older than 1 month. Blynk will
            # also accept points with a timestamp "in the future" within the next 1 month"
            # (docs.blynk.io/en/blynk.cloud-mqtt-api/device-mqtt-api/datastreams): a month read
            # as its longest, 31 days
            now, month = time.time() * 1000, 31 * 86400 * 1000
            if not all(now - month <= x[0] <= now + month for x in doc):
                return broke("blynk.timestamped_age", f"timestamped_batch on {topic} has a point more than a month "
                             f"old or ahead: {payload[:80]!r}")
            if rest[3:-len("/timestamped_batch")] in self.booleans and not all(isinstance(x[1], bool) for x in doc):
                return broke("blynk.boolean", f"Boolean datastream on {topic} got values that are not true/false")
        elif rest == "info/mcu":
            doc = _json(payload)
            if not isinstance(doc, dict) or "ver" not in doc or not isinstance(doc.get("rxbuff"), int):
                return broke("blynk.info_mcu", f"info/mcu needs ver and rxbuff (bytes): {doc}")
            want = self.templates.get(pre[4:-1], self.template_id) if pre else self.template_id
            if want and doc.get("tmpl") != want:
                return broke("blynk.info_mcu", f"info/mcu on {topic}: tmpl must be the device's template id {want}: "
                             f"{doc}")
        elif rest.startswith("event/"):
            if _text_or_none(payload) is None:
                return broke("blynk.event_text", f"event description on {topic} is not UTF-8 text")
        elif rest == "get/meta":
            if not _text_or_none(payload):
                return broke("blynk.meta", "get/meta must name the metadata field(s)")
        elif rest == "get/ds/all":
            if payload:
                return broke("blynk.get_ds_all", f"get/ds/all takes an empty payload, got {payload[:40]!r}")
        elif "/prop/" in rest:
            if _text_or_none(payload) is None or payload[:1] in (b"{", b"["):
                return broke("blynk.prop", f"widget property on {topic} takes plain text, got {payload[:40]!r}")
        elif rest.startswith("ds/"):
            try:
                payload.decode()
            except UnicodeDecodeError:
                return broke("blynk.ds_text", f"ds value on {topic} is not text")
            # a plain value; a multi-value's items 0x00-separated, never a JSON array
            # (docs.blynk.io/en/blynk.cloud-mqtt-api/device-mqtt-api/datastreams)
            if payload.startswith(b"{") or payload.startswith(b"["):
                return broke("blynk.ds_text", f"ds/<name> takes a plain value, got JSON {payload[:40]!r}")
        return None


def _text_or_none(payload: bytes) -> str | None:
    try:
        return payload.decode()
    except UnicodeDecodeError:
        return None


# Weightron ------------------------------------------------------------------------------
_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


class Weightron(Profile):
    """username = the Application ID, password = a current access token (`tokens` can change
    while the test runs: rotation); publish only under <app>/devices/<id> or <app>/hubs/<id>,
    payload a JSON object with an ISO 8601 $timestamp and $native/$raw."""

    name = "weightron"
    qos_rule = "wt.qos"
    json_rule = "wt.payload"
    RESERVED = {"$timestamp", "$raw", "$native"}

    def __init__(self, app_id: str, tokens=(), extra_reserved=(), write=True):
        self.app_id = app_id
        self.tokens = set(tokens)
        self.reserved = self.RESERVED | set(extra_reserved)
        # Source: https://docs.weightron.cloud/docs-mqtt/RequestingAccess - MQTT permissions
        # come in groups (Devices & Hubs, Processes, Documents), each read and/or write; they
        # are disabled by default and granted on request through the reseller. So a publish
        # without the Devices write permission is refused (modelled as the connection closed;
        # ASSUMPTION: the docs do not say how the broker refuses).
        self.write = write

    def connect(self, c: Connect) -> Session:
        if c.username != self.app_id:
            raise Refuse(5, "wt.login", f"username must be the Application ID, got {c.username!r}", violation=True)
        if c.password is None or c.password.decode() not in self.tokens:
            raise Refuse(4, "wt.login", "access token not valid (expired or unknown)")
        return Session(c.username, c.client_id, "app")

    def check_subscribe(self, s, topic, qos):
        return None if topic.startswith(self.app_id + "/") else broke(
            "wt.topics", f"subscription {topic} outside {self.app_id}/")

    def check_publish(self, s, topic, payload, qos, retain):
        if not self.write:
            return broke("wt.write_permission", f"publish to {topic}: the Devices write permission is off")
        if not re.fullmatch(re.escape(self.app_id) + r"/(devices|hubs)/[^/+#]+", topic):
            return broke("wt.topics", f"publish to {topic}: not {self.app_id}/devices/<id> or /hubs/<id>")
        doc = _json(payload)
        if not isinstance(doc, dict):
            return broke("wt.payload", "payload must be a JSON object")
        for k in doc:
            if k.startswith("$") and k not in self.reserved:
                return broke("wt.payload", f"reserved key {k} is not one of {sorted(self.reserved)}")
        if "$native" not in doc and "$raw" not in doc:
            return broke("wt.payload", "payload has neither $native nor $raw")
        ts = doc.get("$timestamp")
        if ts is not None and not (isinstance(ts, str) and _ISO.fullmatch(ts)):
            return broke("wt.payload", f"$timestamp is not ISO 8601: {ts!r}")
        return None


# Biotz ----------------------------------------------------------------------------------
_RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


class Biotz(Profile):
    """username = Device ID, password = the device password; publish only to
    biotz/1/0/<customer>/<device>/publish/data/<type>; subscribe only its action and
    firmware/update topics; flat JSON objects (or arrays of them), timestamps RFC 3339 UTC."""

    name = "biotz"
    qos_rule = "biotz.qos"
    json_rule = "biotz.payload"

    def __init__(self, customer_id: str, devices: dict[str, str]):
        self.customer_id = customer_id
        self.devices = dict(devices)  # device id -> password

    def connect(self, c: Connect) -> Session:
        if c.username not in self.devices or c.password is None or c.password.decode() != self.devices[c.username]:
            raise Refuse(4, "biotz.login", "bad device id or password")
        return Session(c.username, c.client_id, "device",
                       {"base": f"biotz/1/0/{self.customer_id}/{c.username}/"})

    def check_subscribe(self, s, topic, qos):
        base = s.data["base"]
        if (topic == base + "subscribe/firmware/update"
                or re.fullmatch(re.escape(base) + r"subscribe/action/([^/+#]+|\+)", topic)):
            return None
        return broke("biotz.topics", f"subscription {topic}: not this device's action or firmware topic")

    def check_publish(self, s, topic, payload, qos, retain):
        if not re.fullmatch(re.escape(s.data["base"]) + r"publish/data/[^/+#]+", topic):
            return broke("biotz.topics", f"publish to {topic}: not {s.data['base']}publish/data/<message type>")
        doc = _json(payload)
        items = doc if isinstance(doc, list) else [doc]
        if not items:
            return broke("biotz.payload", "empty array")
        for item in items:
            if not isinstance(item, dict):
                return broke("biotz.payload", f"not an object: {item!r}")
            for k, v in item.items():
                if isinstance(v, (dict, list)):
                    return broke("biotz.payload", f"objects must be flat: {k} is nested")
            ts = item.get("timestamp")
            if ts is not None and not (isinstance(ts, int) or (isinstance(ts, str) and _RFC3339_UTC.fullmatch(ts))):
                return broke("biotz.payload", f"timestamp must be epoch ms or RFC 3339 UTC with Z: {ts!r}")
        return None


# -- the proxy ---------------------------------------------------------------------------
async def _make_event() -> asyncio.Event:
    ev = asyncio.Event()
    ev.set()
    return ev


class ProfileProxy:
    """An MQTT-aware TCP proxy applying `profile` in front of mosquitto's plain listener."""

    def __init__(self, profile: Profile, upstream_port: int, upstream_host: str = "127.0.0.1"):
        self.profile = profile
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.connects: list[tuple[str | None, str, int]] = []  # (username, client id, CONNACK code)
        self.violations: list[str] = []
        self.published: list[tuple[str | None, str, bytes]] = []
        self.subscribed: list[tuple[str | None, str]] = []
        self.redirect: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._writers: set = set()
        self._gate: asyncio.Event = None  # type: ignore[assignment]  # set in the loop's thread
        self._lock = threading.Lock()

    # lifecycle --------------------------------------------------------------------------
    def start(self) -> "ProfileProxy":
        ready = threading.Event()

        def run():
            self._loop = asyncio.new_event_loop()
            self._gate = self._loop.run_until_complete(_make_event())
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._client, "127.0.0.1", 0))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True, name=f"profile-{self.profile.name}")
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if not self._loop:
            return

        async def shutdown():
            assert self._server is not None
            self._server.close()
            for w in list(self._writers):
                w.close()
            await asyncio.sleep(0)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(5)

    def drop_clients(self) -> None:
        """Close every client connection now (the device will reconnect)."""
        if self._loop:
            self._loop.call_soon_threadsafe(lambda: [w.close() for w in list(self._writers)])

    def url(self) -> str:
        return f"mqtt://localhost:{self.port}"

    def hold(self, on: bool = True) -> None:
        """Stop (or resume) reading what devices send: their PUBACKs stop coming, so a
        backlog builds up in the device's outbox (to see how it batches one)."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._gate.clear if on else self._gate.set)

    # what tests look at -----------------------------------------------------------------
    def wait_for(self, pred, timeout: float = 20, what: str = "condition"):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                r = pred(self)
            if r:
                return r
            time.sleep(0.05)
        raise AssertionError(f"{self.profile.name} proxy: timed out waiting for {what}; "
                             f"connects={self.connects} violations={self.violations} "
                             f"published={[(t, p[:80]) for _, t, p in self.published[-10:]]}")

    def published_to(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for _, t, p in self.published if t == topic]

    def accepted(self) -> list[tuple[str | None, str, int]]:
        return [c for c in self.connects if c[2] == 0]

    # the proxying -----------------------------------------------------------------------
    def _violation(self, s_user, why: str) -> None:
        with self._lock:
            self.violations.append(f"[{self.profile.name} {s_user}] {why}")

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        up_w = None
        try:
            first, packet, body = await read_packet(reader)
            if first >> 4 != CONNECT:
                self._violation(None, broke("mqtt.connect_first", f"first packet is type {first >> 4}, not CONNECT"))
                return
            c = parse_connect(body)
            if c.protocol != "MQTT" or c.level != 4:
                self._violation(c.username, broke("proxy.mqtt311", f"protocol {c.protocol} level {c.level}: "
                                                  "expected MQTT 3.1.1"))
            try:
                session = self.profile.connect(c)
            except Refuse as r:
                with self._lock:
                    self.connects.append((c.username, c.client_id, r.code))
                if r.violation:
                    self._violation(c.username, broke(r.rule, f"CONNECT: {r.why}"))
                writer.write(bytes([0x20, 2, 0, r.code]))
                await writer.drain()
                return
            with self._lock:
                self.connects.append((c.username, c.client_id, 0))
            up_r, up_w = await asyncio.open_connection(*self.upstream)
            up_w.write(packet)
            await up_w.drain()
            down = asyncio.ensure_future(self._downstream(up_r, writer))
            try:
                await self._upstream(reader, up_w, session, writer)
            finally:
                down.cancel()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            self._writers.discard(writer)
            for w in (writer, up_w):
                if w is not None:
                    w.close()

    async def _downstream(self, up_r, writer) -> None:
        try:
            first, packet, body = await read_packet(up_r)
            writer.write(packet)
            if first >> 4 == CONNACK and body[1:2] == b"\x00" and self.redirect:
                writer.write(publish_packet("downlink/redirect", self.redirect.encode()))
            await writer.drain()
            while True:
                first, packet, body = await read_packet(up_r)
                if first >> 4 == PUBLISH:
                    packet = retopic_publish(first, body, lambda t: t[len(DOWN):] if t.startswith(DOWN) else t)
                writer.write(packet)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _upstream(self, reader, up_w, s: Session, writer) -> None:
        prof = self.profile
        while True:
            await self._gate.wait()
            first, packet, body = await read_packet(reader)
            kind = first >> 4
            why = None
            if kind == PUBLISH:
                topic, payload, qos, retain = parse_publish(first, body)
                with self._lock:
                    self.published.append((s.username, topic, payload))
                if qos > prof.max_qos:
                    why = broke(prof.qos_rule, f"publish QoS {qos} to {topic}")
                else:
                    try:
                        why = prof.check_publish(s, topic, payload, qos, retain)
                    except AssertionError as e:
                        why = broke(prof.json_rule, f"{topic}: {e}")
            elif kind == SUBSCRIBE:
                for topic, qos in parse_subscribe(body):
                    with self._lock:
                        self.subscribed.append((s.username, topic))
                    why = why or (broke(prof.qos_rule, f"subscribe QoS {qos} to {topic}")
                                  if qos > prof.max_qos else None) or prof.check_subscribe(s, topic, qos)
            elif kind == CONNECT:
                why = broke("mqtt.connect_first", "second CONNECT on one connection")
            if why:
                self._violation(s.username, why)
                return  # the cloud closes the connection
            if kind == PUBLISH:
                reply = prof.answer(s, topic, payload)
                if reply is not None:  # the cloud answers it itself: PUBACK, then the answers
                    if qos:
                        writer.write(bytes([0x40, 2]) + body[len(topic.encode()) + 2 : len(topic.encode()) + 4])
                    for t, p in reply:
                        writer.write(publish_packet(t, p))
                    await writer.drain()
                    continue
                packet = retopic_publish(first, body, lambda t: UP + t)
            elif kind == SUBSCRIBE:
                packet = subscribe_packet(first, body, lambda t: DOWN + t)
            elif kind == 10:  # UNSUBSCRIBE: pid, then topics
                packet = _unsubscribe_packet(first, body)
            up_w.write(packet)
            await up_w.drain()


# -- the cloud side of a test -------------------------------------------------------------
class Cloud:
    """A paho client on mosquitto playing the cloud: sees what devices publish (`up/...`,
    recorded with the device's topic) and sends downlinks (`down/...`)."""

    def __init__(self, port: int, host: str = "127.0.0.1"):
        import paho.mqtt.client as mqtt

        self.msgs: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.handlers: list = []  # fn(topic, payload) called for every message (cloud logic)
        self.ready = threading.Event()  # set by the SUBACK: from then on it sees every publish
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"cloud-{id(self)}")
        self.c.on_connect = lambda c, *a: c.subscribe(UP + "#", 1)
        self.c.on_subscribe = lambda *a: self.ready.set()
        self.c.on_message = self._on_message
        self.c.connect(host, port)
        self.c.loop_start()
        assert self.ready.wait(10), "cloud side could not subscribe at mosquitto"

    def _on_message(self, c, u, msg):
        topic = msg.topic[len(UP):]
        with self.lock:
            self.msgs.append((topic, msg.payload))
        for h in list(self.handlers):
            h(topic, msg.payload)

    def send(self, topic: str, payload, qos: int = 1, retain: bool = False, wait: bool = True) -> None:
        """A downlink to the device(s) subscribed to `topic`. wait=False inside handlers
        (they run on paho's network thread)."""
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload)
        info = self.c.publish(DOWN + topic, payload, qos, retain)
        if wait:
            info.wait_for_publish(5)

    def on(self, fn) -> None:
        self.handlers.append(fn)

    def got(self, pred=None) -> list[tuple[str, bytes]]:
        with self.lock:
            msgs = list(self.msgs)
        return [m for m in msgs if pred is None or pred(*m)]

    def wait(self, pred, timeout: float = 30, what: str = "message", console=None):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            r = self.got(pred)
            if r:
                return r
            time.sleep(0.05)
        raise AssertionError(f"cloud: no {what} within {timeout}s; got {[(t, p[:80]) for t, p in self.got()[-15:]]}"
                             + (f"\nconsole:\n{console()}" if console else ""))

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


# -- end-to-end helpers ---------------------------------------------------------------------
# user.py for the end-to-end platform tests: numbered readings, sub-device readings for the
# gateway modes, and a handler that prints what reached it (the tests read the console).
E2E_USER = """
import json
_n = [0]

def read():
    _n[0] += 1
    return {"seq": _n[0], "temp": 21.5}

def read_devices():
    return {"A": {"level": _n[0]}, "B": {"level": 1000 + _n[0]}}

def handle(cmd):
    print("HANDLED %s %s %s" % (cmd.name, json.dumps(cmd.params), getattr(cmd, "device", None)))
    if cmd.name == "echo":
        return {"echo": cmd.params}
    if cmd.name == "write":
        return cmd.params["value"]
    if cmd.name in ("attributes", "set_time", "firmware", "rpc_answer"):
        return None
    if cmd.name == "valve":
        return {"valve": cmd.params, "device": getattr(cmd, "device", None)}
    raise ValueError("unknown command %r" % cmd.name)
"""


def e2e_config(kind: str, url: str, name: str = "e2e-dev", ntp: list | None = None, **platform) -> dict:
    return {
        "device": {"name": name, "board": "host"},
        "ntp": {"servers": ntp or []},
        "platform": {"kind": kind, "url": url, **platform},
        "telemetry": {"interval_s": 1, "health": False},
        "outbox": {"max_bytes": 100000},
    }


def handled(board, name: str) -> list[str]:
    return [ln for ln in list(board.lines) if ln.startswith("HANDLED " + name + " ")]


@contextlib.contextmanager
def ntp_server():
    """A loopback SNTP server telling the real time: yields its "host:port" for config."""
    from tests.ntp_server import NtpServer

    srv = NtpServer().start()
    try:
        yield f"{srv.host}:{srv.port}"
    finally:
        srv.stop()
