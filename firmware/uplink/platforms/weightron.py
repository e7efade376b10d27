# Weightron cloud: secure WebSocket MQTT, username = Application ID, password = a current
# OIDC access token (from platform.credentials, i.e. the token relay; or platform.token).
# Wire contract: PLATFORMS.md "Weightron". Topic and payload shape are per contract, so both
# are configurable.
# The topic tree is documented for *subscribing* (monitoring weighbridges, terminals, traffic
# lights); writing needs the Devices write permission, off by default
# (https://docs.weightron.cloud/docs-mqtt/RequestingAccess). So the device first of all
# watches (`watch`: each message becomes a "watch" command for user.py) and publishes its own
# readings only with `publish = true`.
from time import ticks_diff, ticks_ms

from uplink import ConfigError  # not uplink.config: the app unloads that after boot
from uplink.platforms import (
    Base,
    Command,
    command,
    dumps,
    iso,
    loads,
    loads_obj,
    too_big,
    topic_ok,
)

DEFAULT_URL = "wss://mqtt.weightron.cloud:443/mqtt"
DEFAULT_TOPIC = "{application_id}/devices/{device_id}"

SCHEMA = {
    "application_id": (str, None),
    "device_id": (str, None),
    "topic": (str, DEFAULT_TOPIC),
    "token": (str, None),
    "values_key": (str, "$native"),
    "fields": (dict, None),
    "command_topic": (str, None),
    "watch": ([str], None),
    "publish": (bool, False),
    "max_payload": (int, 65536, lambda v: v >= 256 or "at least 256"),
}


class Adapter(Base):
    def __init__(self, cfg, ctx):
        Base.__init__(self, cfg, ctx, DEFAULT_URL)
        p = cfg["platform"]
        self.device_id = p.get("device_id") or cfg["device"]["name"]
        self._template = p.get("topic") or DEFAULT_TOPIC
        if not p.get("token") and self.creds is None:
            raise ConfigError("config.json: platform.credentials: missing: Weightron's password "
                              "is a short-lived access token: configure the token relay "
                              "(credentials.source = relay) or, for a test, platform.token")
        self.app_id = self.topic = ""  # "": not known until the relay answers
        app_id = p.get("application_id")
        if app_id:
            self._set_app(app_id)
        elif not self.relayed():
            # the relay looks the Application ID up (GET /access) and answers it as the
            # username; without the relay nothing on the board can
            raise ConfigError("config.json: platform.application_id: missing: the Application ID "
                              "(the _id that GET https://api.weightron.cloud/access lists)")
        self.publishes = bool(p.get("publish"))
        self._first_pub = None  # ticks_ms of this session's first publish

    def _set_app(self, app_id):
        if not topic_ok(app_id):
            raise ConfigError("config.json: platform.application_id: a single topic level, got %r"
                              % app_id)
        self.app_id = app_id
        self.topic = self.topic_for(self.device_id)

    def topic_for(self, device_id):
        return self._template.replace("{application_id}", self.app_id).replace("{device_id}", device_id)

    async def credentials(self):
        if self.creds is not None:
            # the username is always the Application ID; the source supplies the token (and,
            # from the relay, the Application ID it found)
            user, token = await self.creds()
            if not self.app_id:
                self._set_app(user)
            return (self.app_id, token)
        return (self.app_id, self.cfg["platform"]["token"])

    def subscriptions(self):
        # called after the first connect: the Application ID is known by then
        p = self.cfg["platform"]
        subs = [(self.app_id + "/" + w, 0) for w in p.get("watch") or ()]
        t = p.get("command_topic")
        return subs + [(t, 1)] if t else subs

    async def on_connect(self, client):
        self._first_pub = None

    def explain(self, event, detail):
        """What a refusal means on Weightron: MQTT permissions are off until the reseller
        grants them (docs-mqtt/RequestingAccess)."""
        text = str(detail)
        if event == "error" and "refused the subscription" in text:
            return ("Weightron %s: the Devices & Hubs read permission is off by default; ask "
                    "your reseller" % text.replace("broker ", "", 1))
        if (event == "disconnected" and self._first_pub is not None
                and ticks_diff(ticks_ms(), self._first_pub) < 10000):
            self._first_pub = None
            return ("Weightron refused the publish to %s (it closed the connection right after "
                    "it: %s): the Devices write permission is off by default; ask your reseller"
                    % (self.topic, text))
        return detail

    def _watched(self, topic):
        if not topic.startswith(self.app_id + "/"):
            return False
        parts = topic[len(self.app_id) + 1:].split("/")
        for w in self.cfg["platform"].get("watch") or ():
            if _match(w.split("/"), parts):
                return True
        return False

    def encode(self, readings):
        # one message per reading: the documented payload is a single object
        p = self.cfg["platform"]
        if not self.publishes:
            return [(None, b"platform.publish is off: this device only watches", len(readings))]
        if self._first_pub is None:
            self._first_pub = ticks_ms()
        key = p.get("values_key") or "$native"
        fields = p.get("fields")
        out = []
        for r in readings:
            dev = r.get("device")
            if dev is not None and not topic_ok(dev):
                out.append((None, ("sub-device name %r cannot be a topic level" % dev).encode(), 1))
                continue
            topic = self.topic if dev is None else self.topic_for(dev)
            obj = {}
            if fields:
                for k in fields:
                    obj[k] = fields[k]
            if r.get("ts") is not None:
                obj["$timestamp"] = iso(r["ts"])
            obj[key] = r["values"]
            payload = dumps(obj).encode()
            if len(topic) + len(payload) + 4 > self.max_payload:
                out.append(too_big(1, len(payload), self.max_payload))
            else:
                out.append((topic, payload, 1))
        return out

    def handle(self, topic, payload, retained):
        if topic != self.cfg["platform"].get("command_topic"):
            if not self.app_id or not self._watched(topic):
                return None
            # a watched device or hub: its current value, for user.py (e.g. a traffic light
            # that follows a weighbridge)
            return Command("watch", {"topic": topic[len(self.app_id) + 1:],
                                     "value": loads(payload, "watched " + topic)})
        req = loads_obj(payload, "command")
        method = req.get("method", req.get("name"))
        if not isinstance(method, str) or not method:
            raise ValueError("command: no method")
        return command(method, req.get("params"))

    def reply(self, cmd, result):
        return None



def _match(pattern, parts):
    """MQTT filter levels against topic levels (+ one level, # the rest)."""
    for i, p in enumerate(pattern):
        if p == "#":
            return True
        if i >= len(parts) or (p != "+" and p != parts[i]):
            return False
    return len(pattern) == len(parts)
