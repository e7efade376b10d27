# Blynk gateway API (docs.blynk.io/en/blynk.cloud-mqtt-api/mqtt-gateway-api): one connection
# as mgmt_device with the gateway's token, or as an OAuth client; every sub-device is
# addressed as dev/<its token>/. The gateway itself is not: "The {deviceToken} in the topic
# must be the authentication token of the specific device you intend to manage or update,
# not the token used for your Gateway API connection" (the same page). So a gateway session
# has no device of its own: its own readings are dropped (said once), and it sends no
# info/mcu, sync or events of its own.
from uplink import ConfigError  # not uplink.config: the app unloads that before adapters exist
from uplink.platforms import dumps, topic_ok


class Gateway:
    """The gateway part of a Blynk adapter (adapter.gateway), for platform.gateway_tokens or
    an OAuth client login.

    An optional part of an adapter is an object of a class in its own module, made by the
    adapter on first need (a gateway: in __init__, when the config asks for one), holding its
    adapter and using only the adapter's public names. A device that does not use the part
    never imports its module: on an ESP32 every module's bytecode lives in the heap."""

    def __init__(self, adapter):
        self.adapter = adapter
        p = adapter.cfg["platform"]
        tokens = self.tokens = {}  # sub-device name -> token
        names = self.names = {}  # token -> sub-device name
        gw = p.get("gateway_tokens") or {}
        for name in gw:
            tok = gw[name]
            if not isinstance(tok, str) or not topic_ok(tok):
                raise ConfigError("config.json: platform.gateway_tokens.%s: expected a device "
                                  "token (text without / + #)" % name)
            tokens[name] = tok
            names[tok] = name
        self.oauth = bool(p.get("oauth_client_id") or p.get("oauth_client_secret"))
        if self.oauth:
            if not (p.get("oauth_client_id") and p.get("oauth_client_secret")) and adapter.creds is None:
                raise ConfigError("config.json: platform.oauth_client_id and oauth_client_secret: "
                                  "both are needed (Blynk console: the OAuth client's Client ID "
                                  "and Client Secret)")
            if not tokens:
                raise ConfigError("config.json: platform.gateway_tokens: missing: an OAuth client "
                                  "login is a gateway session; list {sub-device name: its token}")
        else:
            adapter.require("token", "the device's auth token (the gateway's own token in gateway mode)")
            tok = p.get("token")
            if tok in names:
                raise ConfigError("config.json: platform.gateway_tokens.%s: the gateway's own token, which "
                                  "Blynk does not take as a dev/<token>/ target: give the sub-device's" % names[tok])
        self.info = info = p.get("gateway_info") or {}
        for name in info:
            why = info_problem(info[name]) if name in tokens else "not a sub-device in platform.gateway_tokens"
            if why:
                raise ConfigError("config.json: platform.gateway_info.%s: %s" % (name, why))
        # the adapter's own_prefix (none: see above) and prefixes (see platforms/blynk.py Adapter)
        self.own_prefix = None
        self.prefixes = ["dev/" + tokens[name] + "/" for name in tokens]
        self._said = False

    async def announce(self, client):
        """info/mcu of each sub-device in gateway_info: its own template, type and version
        ("ver - actual software/firmware version of the device", device-mqtt-api/
        authentication). One not listed is not announced: the gateway's would be wrong."""
        from uplink.platforms.blynk import MAX_MESSAGE

        info = self.info
        for name in info:
            d = info[name]
            doc = {"tmpl": d["template_id"], "type": d["template_id"], "ver": d["version"], "rxbuff": MAX_MESSAGE}
            if d.get("build"):
                doc["build"] = d["build"]
            await client.publish("dev/" + self.tokens[name] + "/info/mcu", dumps(doc).encode(), 0)

    def login(self):
        p = self.adapter.cfg["platform"]
        if self.oauth:
            return (p["oauth_client_id"], p["oauth_client_secret"])
        return ("mgmt_device", p["token"])

    def prefix(self, r):
        """dev/<token>/ of a reading's device; None when it cannot be sent."""
        dev = r.get("device")
        if dev is None:
            return self.own_prefix
        tok = self.tokens.get(dev)
        return None if tok is None else "dev/" + tok + "/"

    def unsendable(self, r):
        # the drop reason of a reading prefix() gave None; the gateway's own: said once
        dev = r.get("device")
        if dev is not None:
            return ("no token for sub-device %r in platform.gateway_tokens" % dev).encode()
        if self._said:
            return b""
        self._said = True
        return (b"a Blynk gateway session has no device of its own (Gateway API: dev/<token>/ is a sub-device's, "
                b"never the connection's): send readings for sub-devices (user.read_devices)")

    def route(self, topic):
        """dev/<token>/<rest> -> (rest, "dev/<token>/", the sub-device's name)."""
        k = topic.find("/", 4)
        tok = topic[4:k] if k > 0 else ""
        pre = topic[:k + 1]
        dev = self.names.get(tok)
        if dev is None:
            raise ValueError("downlink for an unknown sub-device token")
        topic = topic[k + 1:]
        if topic == "downlink/redirect":
            raise ValueError("redirect addressed to one device of a gateway session")
        return topic, pre, dev


def info_problem(d):
    """What is wrong with one gateway_info entry (its info/mcu), or None. fleet.py runs it too."""
    if not isinstance(d, dict) or not isinstance(d.get("template_id"), str) or not isinstance(d.get("version"), str):
        return "expected {template_id, version} (each text; build optional)"
    return None
