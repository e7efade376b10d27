# Blynk (blynk.cloud) MQTT device API. Wire contract: PLATFORMS.md "Blynk". Largest message
# 1024 bytes: enforced here, before anything is sent. Optional parts, each imported only by a
# device that uses it (bytecode lives in the heap): the gateway API (blynk_gateway.Gateway:
# gateway_tokens, OAuth client login, dev/<token>/ prefixes) and uplink.cloud's calls
# (blynk_cloud.CloudApi).
import uplink
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
# timestamped_batch points must be "no older than 1 month" (docs.blynk.io .../device-mqtt-api/
# datastreams; the page gives no day count): older readings are not sent, but counted
MONTH_MS = 30 * 86400 * 1000
# info/mcu "build" is the firmware's build date. A build step may set uplink.BUILD (or the
# app ctx.build); without one the console shows this, never the version (that is "ver").
BUILD = "unknown"

_S = (str, None)
SCHEMA = {
    "token": _S,
    "template_id": _S,
    "template_name": _S,
    "gateway_tokens": (dict, None),
    # {sub-device name: {"template_id", "version"[, "build"]}}: its own info/mcu. Checked by
    # blynk_gateway (loaded for gateways only) and, on the host, by fleet.py
    "gateway_info": (dict, None),
    # Gateway API login with an OAuth client (Blynk console: Organization -> OAuth clients):
    # MQTT username = its Client ID, password = its Client Secret. Not "client_id": that
    # common key is the MQTT client id, which must stay unique per connection.
    "oauth_client_id": _S,
    "oauth_client_secret": _S,
    "timestamped": (bool, True),
    "sync": ([str], []),
}


class Adapter(Base):
    clean = True  # Blynk accepts clean sessions only
    keepalive = 45  # what Blynk recommends
    waiter = None  # uplink.cloud's waiter(meta field, payload): the answer to cloud.meta()
    # A plain device's; a gateway's come from its part. own_prefix: the prefix of this
    # device's own topics ("", or None: a gateway session has no device of its own,
    # blynk_gateway.py); prefixes: every prefix subscribed.
    own_prefix = ""
    prefixes = ("",)
    _cloud = None  # cloud_api()'s part, once asked for

    def __init__(self, cfg, ctx):
        Base.__init__(self, cfg, ctx, DEFAULT_URL, MAX_MESSAGE)
        p = cfg["platform"]
        self.max_payload = MAX_MESSAGE  # Blynk's, whatever the config says
        if p.get("gateway_tokens") or p.get("oauth_client_id") or p.get("oauth_client_secret"):
            from uplink.platforms.blynk_gateway import Gateway

            g = self.gateway = Gateway(self)
            self.own_prefix = g.own_prefix
            self.prefixes = g.prefixes
        else:
            self.require("token", "the device's auth token (the gateway's own token in gateway mode)")

    async def credentials(self):
        if self.creds is not None:
            return await self.creds()
        if self.gateway is not None:
            return self.gateway.login()
        return ("device", self.cfg["platform"]["token"])

    def subscriptions(self):
        out = []
        for pre in self.prefixes:
            out.append((pre + "downlink/#", 1))
        return out

    async def on_connect(self, client):
        p = self.cfg["platform"]
        build = getattr(uplink, "BUILD", None) or BUILD  # (host_tools/build.py writes BUILD)
        own = self.own_prefix
        if own is not None:
            info = {"ver": self.ctx.fw()[1], "build": build, "rxbuff": MAX_MESSAGE}
            t = p.get("template_id")
            if t:
                info["tmpl"] = info["type"] = t
            await client.publish(own + "info/mcu", dumps(info).encode(), 0)
        if self.gateway is not None:  # each sub-device's own template and version
            await self.gateway.announce(client)
        sync = p.get("sync")
        if sync and own is not None:  # the current values come back as downlink/ds/<name> writes
            await client.publish(own + "get/ds", ",".join(sync).encode(), 0)
        # The cloud's time, the clock's fallback while SNTP is blocked (clock.set_from_cloud):
        # answered on downlink/utc/all/json (docs.blynk.io .../device-mqtt-api/topic-structure).
        # UTC is one for every device: a gateway asks through any device it reaches.
        pre = own if own is not None else (self.prefixes[0] if self.prefixes else None)
        if pre is not None:
            await client.publish(pre + "get/utc/all/json", b"", 0)

    def cloud_api(self):
        """uplink.cloud's calls (blynk_cloud.CloudApi), made at the first ask: a device whose
        user.py does not use uplink.cloud never loads them."""
        c = self._cloud
        if c is None:
            from uplink.platforms.blynk_cloud import CloudApi

            c = self._cloud = CloudApi(self)
        return c

    # -- telemetry -------------------------------------------------------------------------
    def _prefix(self, r):
        g = self.gateway
        return self.own_prefix if g is None else g.prefix(r)

    def encode(self, readings):
        out = []
        i, n = 0, len(readings)
        stamped = self.cfg["platform"].get("timestamped", True)
        now = self.ctx.now_ms() if stamped else None
        cut = None if now is None else now - MONTH_MS
        while i < n:
            r = readings[i]
            k = r.get("k")
            if _old(r, cut):
                j = i + 1
                while j < n and _old(readings[j], cut):
                    j += 1
                out.append(self._too_old(j - i))
                i = j
                continue
            pre = None if k is not None else self._prefix(r)
            if pre is None:  # an uplink.cloud record, or a gateway's reading with nowhere to go
                if k is None:
                    out.append((None, self.gateway.unsendable(r), 1))
                else:
                    self.cloud_api().record(r, k, out)
                i += 1
                continue
            j = i
            if stamped and r.get("ts") is not None:
                while (j < n and readings[j].get("ts") is not None and "k" not in readings[j] and not
                       _old(readings[j], cut) and self._prefix(readings[j]) == pre
                       and _names_ok(readings[j]["values"])):
                    j += 1
            if j - i > 1:
                # buffered readings keep their own time: one timestamped_batch per datastream
                self._timestamped(readings, i, j, pre, out)
                i = j
            else:
                self._one(r, pre, out)
                i += 1
        return out

    def _too_old(self, n):
        # the drop marker of n readings too old for Blynk: its reason said once, on the console
        # by the publisher, then counted only (health: too_old)
        self.too_old += n
        said = self._said_old
        self._said_old = True
        why = b"older than the month Blynk takes (datastreams page); health counts them: too_old"
        return (None, b"" if said else why, n)

    _said_old = False

    def room(self, topic):
        """The payload bytes a message to `topic` has room for."""
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
                    payload = plain_text(values[name]).encode()
                    if len(payload) > self.room(topic):
                        out.append(too_big(1, len(payload), self.max_payload))
                    else:
                        out.append((topic, payload, 1))
                    return
        # several values: batch_ds, split over several messages when needed (n=0 for the parts
        # before the last: the reading is delivered when its last part is)
        topic = pre + "batch_ds"
        pack = Pack(self.room(topic), "{}")
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
            pack = Pack(self.room(topic))
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
        g = self.gateway
        if g is not None and topic.startswith("dev/"):
            topic, pre, dev = g.route(topic)
        if not topic.startswith("downlink/"):
            return None
        what = topic[9:]
        if what == "redirect":
            with uplink.transient():
                from uplink.platforms.blynk_redirect import url as redirect_url

                url = redirect_url(text(payload, "redirect").strip(), self.url)
            self.url = url
            return Command("redirect", {"url": url})
        if what == "reboot" or what == "ping":
            return Command(what, None, None, dev)
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
            o = loads_obj(payload, "ota/json")
            if dev is None and o.get("ver") and str(o["ver"]) == self.ctx.fw()[1]:
                # the version running: Blynk sends the notice after every info/mcu while the
                # shipment lasts, and the updater is loaded for an update only
                return None
            # the device's own package is the updater's (uplink.ota); a sub-device's, user.py's
            return Command("ota" if dev is None else "firmware", o, None, dev)
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
        payload = plain_text(result).encode()
        if len(payload) > self.room(topic):
            return None
        return (topic, payload)


def _old(r, cut):
    # a reading (not an uplink.cloud record) whose time is before `cut` (None: no cut)
    ts = r.get("ts")
    return cut is not None and ts is not None and ts < cut and "k" not in r


def _names_ok(values):
    for name in values:
        if not topic_ok(name):
            return False
    return True


def plain_text(v):
    # Plain text: Boolean datastreams take true/false (docs.blynk.io .../device-mqtt-api/
    # datastreams), numbers as str() writes them, which is what dumps writes too (MicroPython's
    # float_print, py/objfloat.c, ignores the print kind). A multi-value (a Location, a list)
    # has its items separated by a 0x00 byte (the same page); anything else as JSON.
    if isinstance(v, (list, tuple)):
        return "\0".join([x if isinstance(x, str) else dumps(x) for x in v])
    return v if isinstance(v, str) else dumps(v)


def _parse_value(raw):
    if "\0" in raw:  # a multi-value write: its items, 0x00-separated as on ds/ (plain_text)
        return [_parse_value(x) for x in raw.split("\0")]
    if raw == "true" or raw == "false":
        return raw == "true"
    for f in (int, float):
        try:
            return f(raw)
        except ValueError:
            pass
    return raw
