# Biotz: mqtts, username = Device ID, password = the device password (no token for MQTT).
# Or, with transport = "http", HTTP ingestion: POST with the id_token the token relay gets by
# Keycloak's password grant (uplink.biotz_http.Session; the password stays off the board).
# The id_token is never an MQTT password. Wire contract: PLATFORMS.md "Biotz". Flat JSON
# objects with an RFC 3339 UTC "timestamp"; several readings as one array.
from uplink import ConfigError  # not uplink.config: the app unloads that after boot
from uplink.platforms import (
    Base,
    Command,
    Pack,
    command,
    dumps,
    iso,
    loads_obj,
    too_big,
    topic_ok,
)

DEFAULT_URL = "mqtts://broker.biotz.io:8883"
INGEST_URL = "https://ingestion-http.biotz.io"  # = biotz_http.DEFAULT_URL
FIRMWARE_FILE = "biotz_firmware"  # sha256 of the last firmware/update message reported

SCHEMA = {
    "device_id": (str, None),
    "customer_id": (str, None),
    "password": (str, None),
    "message_type": (str, "telemetry"),
    "action_types": ([str], ["+"]),
    "transport": (str, "mqtt", lambda v: v in ("mqtt", "http") or "mqtt or http"),
    "ingest_url": (str, None),
    "max_payload": (int, 65536, lambda v: v >= 256 or "at least 256"),
}


class Adapter(Base):
    def __init__(self, cfg, ctx):
        p = cfg["platform"]
        Base.__init__(self, cfg, ctx, DEFAULT_URL, client_id=p.get("device_id"))
        for key in ("device_id", "customer_id"):
            if not p.get(key) or not topic_ok(p[key]):
                raise ConfigError("config.json: platform.%s: missing: copy it from the device's "
                                  "Biotz credentials file" % key)
        mt = p.get("message_type") or "telemetry"
        if not topic_ok(mt):
            raise ConfigError("config.json: platform.message_type: a single topic level, got %r" % mt)
        self.device_id = p["device_id"]
        self.base = "biotz/1/0/%s/%s/" % (p["customer_id"], self.device_id)
        self.topic = self.base + "publish/data/" + mt
        self.firmware_file = FIRMWARE_FILE
        relay = self.relayed()
        self.http = p.get("transport") == "http"
        if self.http:
            self.url = p.get("ingest_url") or INGEST_URL
            self.message_type = mt
            if not relay:
                raise ConfigError("config.json: platform.credentials: transport http posts with "
                                  "an id_token from the token relay: set credentials.source = "
                                  "relay")
        elif relay:
            raise ConfigError("config.json: platform.credentials: Biotz MQTT logs in with the "
                              "Device ID and the device password; the relay's id_token is for "
                              "HTTP ingestion (set transport = http, or platform.password)")
        else:
            self.require("password", "the Password from the device's Biotz credentials file")

    async def credentials(self):
        if self.creds is not None and not self.http:
            return await self.creds()  # static username/password
        return (self.device_id, self.cfg["platform"]["password"])

    def make_client(self, app):
        """transport http: the ingestion session in place of the MQTT client (app.py)."""
        if not self.http:
            return None
        from uplink.biotz_http import Session

        ca = self.cfg["platform"].get("ca")
        if ca:
            with open(ca, "rb") as f:
                ca = f.read()
        return Session(self.creds, self.message_type, url=self.url, ca=ca)

    def subscriptions(self):
        if self.http:
            return []  # HTTP ingestion has no downlink
        subs = [(self.base + "subscribe/action/" + t, 1)
                for t in self.cfg["platform"].get("action_types") or ["+"]]
        subs.append((self.base + "subscribe/firmware/update", 1))
        return subs

    async def on_connect(self, client):
        pass

    def encode(self, readings):
        out = []
        pack = Pack(self.max_payload - len(self.topic) - 4)
        for r in readings:
            obj = {}
            if r.get("ts") is not None:
                obj["timestamp"] = iso(r["ts"])
            values = r["values"]
            for k in values:
                if k != "timestamp" or "timestamp" not in obj:
                    obj[k] = values[k]
            piece = dumps(obj)
            if len(piece) > pack.room:  # a lone object goes without the brackets
                if len(pack):
                    out.append(self._message(pack))
                out.append(too_big(1, len(piece), self.max_payload))
                continue
            if pack.full_for(piece):
                out.append(self._message(pack))
            pack.add(piece)
        if len(pack):
            out.append(self._message(pack))
        return out

    def _message(self, pack):
        n = len(pack)
        return (self.topic, pack.take(True).encode(), n)  # type: ignore

    def handle(self, topic, payload, retained):
        if not topic.startswith(self.base + "subscribe/"):
            return None
        what = topic[len(self.base) + 10:]
        if what.startswith("action/"):
            action = what[7:]
            if not action or "/" in action:
                raise ValueError("action topic without an action type: %s" % topic)
            params = loads_obj(payload, "action " + action) if payload else None
            return command(action, params)
        if what == "firmware/update":
            return self._firmware(payload)
        return None

    def _firmware(self, payload):
        # Retained, so it arrives again on every connect: report each distinct message once
        # (its digest is kept on flash across reboots); acting on it waits for OTA.
        if not payload:
            return None  # the retained message was cleared
        import binascii
        import hashlib

        digest = binascii.hexlify(hashlib.sha256(payload).digest()).decode()
        try:
            with open(self.firmware_file) as f:
                seen = f.read().strip()
        except OSError:
            seen = ""
        if seen == digest:
            return None
        with open(self.firmware_file, "w") as f:
            f.write(digest)
        info = loads_obj(payload, "firmware update")
        url = info.get("download-url")
        if not isinstance(url, str) or not url:
            raise ValueError("firmware update without a download-url")
        return Command("firmware", info)

    def reply(self, cmd, result):
        return None  # Biotz actions have no reply channel


