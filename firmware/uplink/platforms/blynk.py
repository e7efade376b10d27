# Blynk (blynk.cloud) MQTT device API, and the gateway API (one connection as mgmt_device
# with the gateway's token, or as an OAuth client; every device, the gateway itself too, is
# addressed as dev/<its token>/). Wire contract: PLATFORMS.md "Blynk",
# https://docs.blynk.io/en/blynk.cloud-mqtt-api/mqtt-gateway-api. Largest message 1024
# bytes: enforced here, before anything is sent.
import uplink
from uplink.config import ConfigError
from uplink.platforms import (
    Base,
    Command,
    Pack,
    dumps,
    loads_obj,
    text,
    too_big,
    topic_ok,
)

DEFAULT_URL = "mqtts://blynk.cloud:8883"
MAX_MESSAGE = 1024
SCHEMES = ("mqtt://", "mqtts://", "ws://", "wss://")
# info/mcu "build" is the firmware's build date. A build step may set uplink.BUILD (or the
# app ctx.build); without one the console shows this, never the version (that is "ver").
BUILD = "unknown"

SCHEMA = {
    "token": (str, None),
    "template_id": (str, None),
    "template_name": (str, None),
    "gateway_tokens": (dict, None),
    # Gateway API login with an OAuth client (Blynk console: Organization -> OAuth clients):
    # MQTT username = its Client ID, password = its Client Secret. Not "client_id": that
    # common key is the MQTT client id, which must stay unique per connection.
    "oauth_client_id": (str, None),
    "oauth_client_secret": (str, None),
    "timestamped": (bool, True),
    "sync": ([str], []),
}


class Adapter(Base):
    clean = True  # Blynk accepts clean sessions only
    keepalive = 45  # what Blynk recommends
    waiter = None  # uplink.cloud's waiter(meta field, payload): the answer to cloud.meta()

    def __init__(self, cfg, ctx):
        Base.__init__(self, cfg, ctx, DEFAULT_URL, MAX_MESSAGE)
        p = cfg["platform"]
        self.max_payload = MAX_MESSAGE  # Blynk's, whatever the config says
        self.timestamped = p.get("timestamped", True)
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
        self.oauth = bool(p.get("oauth_client_id") or p.get("oauth_client_secret"))
        self.gateway = bool(self._tokens) or self.oauth
        if self.oauth:
            if not (p.get("oauth_client_id") and p.get("oauth_client_secret")) and self._creds is None:
                raise ConfigError("config.json: platform.oauth_client_id and oauth_client_secret: "
                                  "both are needed (Blynk console: the OAuth client's Client ID "
                                  "and Client Secret)")
            if not self._tokens:
                raise ConfigError("config.json: platform.gateway_tokens: missing: an OAuth client "
                                  "login is a gateway session; list {sub-device name: its token}")
        else:
            self.require("token", "the device's auth token (the gateway's own token in gateway mode)")
        tok = p.get("token")
        # The gateway API addresses every device, the gateway itself too, as dev/<token>/;
        # an OAuth client session has no device of its own. A plain device session: "".
        if not self.gateway:
            self._own = ""
        elif tok and not self.oauth:
            if not topic_ok(tok):
                raise ConfigError("config.json: platform.token: expected a device token (text without / + #)")
            self._own = "dev/" + tok + "/"
        else:
            self._own = None

    async def credentials(self):
        if self._creds is not None:
            return await self._creds()
        p = self.cfg["platform"]
        if self.oauth:
            return (p["oauth_client_id"], p["oauth_client_secret"])
        return ("mgmt_device" if self.gateway else "device", p["token"])

    def _prefixes(self):
        if self._own is not None:
            yield self._own
        for name in self._tokens:
            yield "dev/" + self._tokens[name] + "/"

    def subscriptions(self):
        return [(pre + "downlink/#", 1) for pre in self._prefixes()]

    async def on_connect(self, client):
        p = self.cfg["platform"]
        build = getattr(self.ctx, "build", None) or getattr(uplink, "BUILD", None) or BUILD
        info = {"ver": self.ctx.version, "build": build, "rxbuff": MAX_MESSAGE}
        if p.get("template_id"):
            info["tmpl"] = p["template_id"]
            info["type"] = p["template_id"]
        payload = dumps(info).encode()
        for pre in self._prefixes():
            await client.publish(pre + "info/mcu", payload, 0)
        sync = p.get("sync")
        if sync and self._own is not None:  # the current values come back as downlink/ds/<name> writes
            await client.publish(self._own + "get/ds", ",".join(sync).encode(), 0)

    # -- uplink.cloud: what is not a reading (docs.blynk.io .../device-mqtt-api/topic-structure)
    def _mine(self, what, name):
        if self._own is None:
            raise ValueError("%s: an OAuth gateway session has no device of its own" % what)
        if not topic_ok(name):
            raise ValueError("%s: %r cannot be a topic level (empty, or has / + #)" % (what, name))
        return self._own

    def event_message(self, code, text):
        """Log event: event/<event code>, the description as plain text (empty: the event's
        own description). docs.blynk.io/en/getting-started/events-tutorial: the code is the
        template's EVENT_CODE."""
        return (self._mine("event", code) + "event/" + code, text.encode())

    def prop_message(self, datastream, name, value):
        """Widget property: ds/<datastream>/prop/<property>, the value as plain text
        (docs.blynk.io .../device-mqtt-api/widget-properties)."""
        self._mine("property", name)
        return (self._mine("property", datastream) + "ds/" + datastream + "/prop/" + name,
                _text(value).encode())

    def meta_request(self, field):
        """Metadata read: get/meta with the field name; answered on downlink/meta/<field>
        (topic-structure)."""
        return (self._mine("metadata", field) + "get/meta", field.encode())

    def sync_request(self, keys):
        """For uplink.cloud.on_change after a connect: get/ds with the names, else get/ds/all
        (every datastream with "Sync with latest server value" on, docs.blynk.io
        .../device-mqtt-api/datastreams); None when platform.sync asked already."""
        if self._own is None or (not keys and self.cfg["platform"].get("sync")):
            return None
        if keys:
            return (self._own + "get/ds", ",".join(keys).encode())
        return (self._own + "get/ds/all", b"")

    # -- telemetry -------------------------------------------------------------------------
    def _prefix(self, r):
        dev = r.get("device")
        if dev is None or not self.gateway:
            return self._own
        tok = self._tokens.get(dev)
        return None if tok is None else "dev/" + tok + "/"

    def encode(self, readings):
        out = []
        i, n = 0, len(readings)
        while i < n:
            r = readings[i]
            k = r.get("k")
            if k is not None:  # not a reading: an uplink.cloud record
                self._record(r, k, out)
                i += 1
                continue
            pre = self._prefix(r)
            if pre is None:
                dev = r.get("device")
                out.append((None, (("no token for sub-device %r in platform.gateway_tokens" % dev)
                                   if dev is not None else "an OAuth gateway session has no device of "
                                   "its own: send readings for sub-devices (user.read_devices)").encode(), 1))
                i += 1
                continue
            j = i
            if self.timestamped and r.get("ts") is not None:
                while (j < n and readings[j].get("ts") is not None and "k" not in readings[j]
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

    def _record(self, r, k, out):
        if k != "e":
            out.append((None, ("a %r record is not for Blynk" % k).encode(), 1))
            return
        try:
            topic, payload = self.event_message(r["code"], r.get("text") or "")
        except ValueError as e:
            out.append((None, str(e).encode(), 1))
            return
        # a description too long for one message is cut, the event itself still counts
        room = self._room(topic)
        if len(payload) > room:
            i = room
            while i and payload[i] & 0xC0 == 0x80:  # not inside a UTF-8 character
                i -= 1
            payload = payload[:i]
        out.append((topic, payload, 1))

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
        pack = Pack(self._room(topic), "{}")
        start = len(out)
        for name in values:
            piece = dumps(name) + ":" + dumps(values[name])
            if not pack.fits(piece):
                del out[start:]
                out.append(too_big(1, len(piece) + 2, self.max_payload))
                return
            done = pack.add(piece)
            if done is not None:
                out.append((topic, done.encode(), 0))
        out.append((topic, pack.take().encode(), 1))  # type: ignore

    def _timestamped(self, readings, i, j, pre, out):
        start = len(out)
        names = []
        for k in range(i, j):
            for name in readings[k]["values"]:
                if name not in names:
                    names.append(name)
        for name in names:
            topic = pre + "ds/" + name + "/timestamped_batch"
            pack = Pack(self._room(topic))
            for k in range(i, j):
                values = readings[k]["values"]
                if name not in values:
                    continue
                piece = "[%d,%s]" % (readings[k]["ts"], dumps(values[name]))
                if not pack.fits(piece):
                    continue  # one oversize value cannot be sent; the rest still can
                done = pack.add(piece)
                if done is not None:
                    out.append((topic, done.encode(), 0))
            if len(pack):
                out.append((topic, pack.take().encode(), 0))  # type: ignore
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
            pre = topic[:k + 1]
            dev = self._names.get(tok)
            if dev is None and pre != self._own:
                raise ValueError("downlink for an unknown sub-device token")
            topic = topic[k + 1:]
        if not topic.startswith("downlink/"):
            return None
        what = topic[9:]
        if what == "redirect":
            if pre:
                raise ValueError("redirect addressed to one device of a gateway session")
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
        if what.startswith("meta/"):  # the answer to get/meta (uplink.cloud.meta)
            w = self.waiter
            if w is not None and dev is None:
                w(what[5:], payload)
            return None
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


def _text(v):
    # Boolean datastreams take true/false (docs.blynk.io .../device-mqtt-api/datastreams)
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return str(v)
    return dumps(v)


def _parse_value(raw):
    if raw == "true" or raw == "false":
        return raw == "true"
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return float(raw)
    except ValueError:
        return raw
