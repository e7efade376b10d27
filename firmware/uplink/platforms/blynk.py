# Blynk (blynk.cloud) MQTT device API, and the gateway API (one connection as mgmt_device,
# every device-API topic prefixed dev/<sub-device token>/). Wire contract: PLATFORMS.md
# "Blynk". Largest message 1024 bytes: enforced here, before anything is sent.
from uplink.config import ConfigError
from uplink.platforms import (
    Base,
    Command,
    client_id,
    credential_source,
    dumps,
    loads_obj,
    platform_url,
    text,
    too_big,
    topic_ok,
)

DEFAULT_URL = "mqtts://blynk.cloud:8883"
MAX_MESSAGE = 1024
SCHEMES = ("mqtt://", "mqtts://", "ws://", "wss://")

SCHEMA = {
    "token": (str, None),
    "template_id": (str, None),
    "template_name": (str, None),
    "gateway_tokens": (dict, None),
    "timestamped": (bool, True),
    "sync": ([str], []),
}


class Adapter(Base):
    clean = True  # Blynk accepts clean sessions only
    keepalive = 45  # what Blynk recommends

    def __init__(self, cfg, ctx):
        p = cfg["platform"]
        self.cfg = cfg
        self.ctx = ctx
        self.url = platform_url(cfg, DEFAULT_URL)
        self.client_id = client_id(cfg)
        self.max_payload = MAX_MESSAGE
        self.timestamped = p.get("timestamped", True)
        self._creds = credential_source(p)
        if not p.get("token") and self._creds is None:
            raise ConfigError("config.json: platform.token: missing: the device's auth token "
                              "(the gateway's own token in gateway mode)")
        gw = p.get("gateway_tokens") or {}
        self._tokens = {}  # sub-device name -> token
        self._names = {}  # token -> sub-device name
        for name in gw:
            tok = gw[name]
            if not isinstance(tok, str) or not topic_ok(tok):
                raise ConfigError("config.json: platform.gateway_tokens.%s: expected a device "
                                  "token (text without / + #)" % name)
            self._tokens[name] = tok
            self._names[tok] = name
        self.gateway = bool(self._tokens)

    async def credentials(self):
        if self._creds is not None:
            return await self._creds()
        return ("mgmt_device" if self.gateway else "device", self.cfg["platform"]["token"])

    def _prefixes(self):
        yield ""
        for name in self._tokens:
            yield "dev/" + self._tokens[name] + "/"

    def subscriptions(self):
        return [(pre + "downlink/#", 1) for pre in self._prefixes()]

    async def on_connect(self, client):
        p = self.cfg["platform"]
        info = {"ver": self.ctx.version, "build": getattr(self.ctx, "build", None) or self.ctx.version,
                "rxbuff": MAX_MESSAGE}
        if p.get("template_id"):
            info["tmpl"] = p["template_id"]
            info["type"] = p["template_id"]
        payload = dumps(info).encode()
        for pre in self._prefixes():
            await client.publish(pre + "info/mcu", payload, 0)
        sync = p.get("sync")
        if sync:  # the current values come back as downlink/ds/<name> writes
            await client.publish("get/ds", ",".join(sync).encode(), 0)

    # -- telemetry -------------------------------------------------------------------------
    def _prefix(self, r):
        dev = r.get("device")
        if dev is None or not self.gateway:
            return ""
        tok = self._tokens.get(dev)
        return None if tok is None else "dev/" + tok + "/"

    def encode(self, readings):
        out = []
        i, n = 0, len(readings)
        while i < n:
            r = readings[i]
            pre = self._prefix(r)
            if pre is None:
                out.append((None, ("no token for sub-device %r in platform.gateway_tokens"
                                   % r.get("device")).encode(), 1))
                i += 1
                continue
            j = i
            if self.timestamped and r.get("ts") is not None:
                while (j < n and readings[j].get("ts") is not None
                       and self._prefix(readings[j]) == pre and _names_ok(readings[j]["values"])):
                    j += 1
            if j - i > 1:
                # buffered readings keep their own time: one timestamped_batch per datastream
                self._timestamped(readings, i, j, pre, out)
                i = j
            else:
                self._one(r, pre, out)
                i += 1
        return out

    def _room(self, topic):
        return self.max_payload - len(topic) - 4

    def _one(self, r, pre, out):
        values = r["values"]
        if not values:
            out.append((None, b"reading has no values", 1))
            return
        if len(values) == 1:
            for name in values:
                if topic_ok(name):
                    topic = pre + "ds/" + name
                    payload = _text(values[name]).encode()
                    if len(payload) > self._room(topic):
                        out.append(too_big(1, len(payload), self.max_payload))
                    else:
                        out.append((topic, payload, 1))
                    return
        # several values: batch_ds, split over several messages when needed (n=0 for the parts
        # before the last: the reading is delivered when its last part is)
        topic = pre + "batch_ds"
        room = self._room(topic)
        parts = []
        size = 2
        start = len(out)
        for name in values:
            piece = dumps(name) + ":" + dumps(_json_value(values[name]))
            if len(piece) + 2 > room:
                del out[start:]
                out.append(too_big(1, len(piece) + 2, self.max_payload))
                return
            if parts and size + 1 + len(piece) > room:
                out.append((topic, ("{" + ",".join(parts) + "}").encode(), 0))
                parts, size = [], 2
            size += len(piece) + (1 if parts else 0)
            parts.append(piece)
        out.append((topic, ("{" + ",".join(parts) + "}").encode(), 1))

    def _timestamped(self, readings, i, j, pre, out):
        start = len(out)
        names = []
        for k in range(i, j):
            for name in readings[k]["values"]:
                if name not in names:
                    names.append(name)
        for name in names:
            topic = pre + "ds/" + name + "/timestamped_batch"
            room = self._room(topic)
            parts = []
            size = 2
            for k in range(i, j):
                values = readings[k]["values"]
                if name not in values:
                    continue
                piece = "[%d,%s]" % (readings[k]["ts"], dumps(_json_value(values[name])))
                if len(piece) + 2 > room:
                    continue  # one oversize value cannot be sent; the rest still can
                if parts and size + 1 + len(piece) > room:
                    out.append((topic, ("[" + ",".join(parts) + "]").encode(), 0))
                    parts, size = [], 2
                size += len(piece) + (1 if parts else 0)
                parts.append(piece)
            if parts:
                out.append((topic, ("[" + ",".join(parts) + "]").encode(), 0))
        if len(out) > start:
            last = out[-1]
            out[-1] = (last[0], last[1], j - i)
        else:
            out.append((None, b"no value fits a Blynk message", j - i))

    # -- downlink --------------------------------------------------------------------------
    def handle(self, topic, payload, retained):
        dev = None
        pre = ""
        if topic.startswith("dev/"):
            k = topic.find("/", 4)
            tok = topic[4:k] if k > 0 else ""
            dev = self._names.get(tok)
            if dev is None:
                raise ValueError("downlink for an unknown sub-device token")
            pre = topic[:k + 1]
            topic = topic[k + 1:]
        if not topic.startswith("downlink/"):
            return None
        what = topic[9:]
        if what == "redirect":
            if dev is not None:
                raise ValueError("redirect addressed to a sub-device")
            url = text(payload, "redirect").strip()
            host = url[url.find("://") + 3:] if "://" in url else ""
            if not any(url.startswith(s) for s in SCHEMES) or not host or host[0] in "/:":
                raise ValueError("redirect: expected an mqtt://, mqtts://, ws:// or wss:// URI, got %r"
                                 % url[:60])
            self.url = url
            return Command("redirect", {"url": url})
        if what == "reboot":
            return Command("reboot", None, None, dev)
        if what == "ping":
            return Command("ping", None, None, dev)
        if what.startswith("ds/"):
            name = what[3:]
            if not name:
                raise ValueError("datastream write without a datastream name")
            raw = text(payload, "datastream " + name)
            return Command("write", {"name": name, "value": _parse_value(raw), "raw": raw},
                           ("ds", pre, name), dev)
        if what == "ota/json":
            return Command("firmware", loads_obj(payload, "ota/json"), None, dev)
        if what == "utc/all/json":
            t = loads_obj(payload, "utc/all/json").get("time")
            if isinstance(t, int) and not isinstance(t, bool) and t > 0:
                return Command("set_time", {"ms": t})
            return None
        return None  # diag, reconfigure, ...: nothing to do

    def reply(self, cmd, result):
        # A datastream write is confirmed by writing the value (the new state) back.
        to = cmd.reply_to
        if not to or to[0] != "ds" or result is None:
            return None
        topic = to[1] + "ds/" + to[2]
        payload = _text(result).encode()
        if len(payload) > self._room(topic):
            return None
        return (topic, payload)


def _names_ok(values):
    for name in values:
        if not topic_ok(name):
            return False
    return True


def _json_value(v):
    # Blynk switches and LEDs are 0/1
    if v is True:
        return 1
    if v is False:
        return 0
    return v


def _text(v):
    v = _json_value(v)
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return str(v)
    return dumps(v)


def _parse_value(raw):
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return float(raw)
    except ValueError:
        return raw
