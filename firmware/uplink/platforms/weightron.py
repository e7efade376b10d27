# Weightron cloud: secure WebSocket MQTT, username = Application ID, password = a current
# OIDC access token (from platform.credentials, i.e. the token relay; or platform.token).
# Wire contract: PLATFORMS.md "Weightron". Topic and payload shape are per contract, so both
# are configurable.
from uplink.config import ConfigError
from uplink.platforms import (
    Base,
    client_id,
    command,
    credential_source,
    dumps,
    iso,
    loads_obj,
    platform_url,
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
    "max_payload": (int, 65536, lambda v: v >= 256 or "at least 256"),
}


class Adapter(Base):
    def __init__(self, cfg, ctx):
        p = cfg["platform"]
        self.cfg = cfg
        self.ctx = ctx
        self.url = platform_url(cfg, DEFAULT_URL)
        self.client_id = client_id(cfg)
        self.max_payload = p.get("max_payload") or 65536
        self.app_id = p.get("application_id")
        if not self.app_id or not topic_ok(self.app_id):
            raise ConfigError("config.json: platform.application_id: missing: the Application ID "
                              "(the _id that GET https://api.weightron.cloud/access lists)")
        self.device_id = p.get("device_id") or cfg["device"]["name"]
        self._template = p.get("topic") or DEFAULT_TOPIC
        self.topic = self.topic_for(self.device_id)
        self._creds = credential_source(p)
        if not p.get("token") and self._creds is None:
            raise ConfigError("config.json: platform.credentials: missing: Weightron's password "
                              "is a short-lived access token: configure the token relay "
                              "(credentials.source = relay) or, for a test, platform.token")

    def topic_for(self, device_id):
        return self._template.replace("{application_id}", self.app_id).replace("{device_id}", device_id)

    async def credentials(self):
        if self._creds is not None:
            # the username is always the Application ID; the source supplies the token
            return (self.app_id, (await self._creds())[1])
        return (self.app_id, self.cfg["platform"]["token"])

    def subscriptions(self):
        t = self.cfg["platform"].get("command_topic")
        return [(t, 1)] if t else []

    async def on_connect(self, client):
        pass

    def encode(self, readings):
        # one message per reading: the documented payload is a single object
        p = self.cfg["platform"]
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
            return None
        req = loads_obj(payload, "command")
        method = req.get("method", req.get("name"))
        if not isinstance(method, str) or not method:
            raise ValueError("command: no method")
        return command(method, req.get("params"))

    def reply(self, cmd, result):
        return None
