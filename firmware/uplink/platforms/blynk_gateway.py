# Blynk gateway API (docs.blynk.io/en/blynk.cloud-mqtt-api/mqtt-gateway-api): one connection
# as mgmt_device with the gateway's token, or as an OAuth client; every device, the gateway
# itself too, is addressed as dev/<its token>/.
from uplink import ConfigError  # not uplink.config: the app unloads that before adapters exist
from uplink.platforms import topic_ok


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
            own = None  # an OAuth client session has no device of its own
        else:
            adapter.require("token", "the device's auth token (the gateway's own token in gateway mode)")
            tok = p.get("token")
            if tok:
                if not topic_ok(tok):
                    raise ConfigError("config.json: platform.token: expected a device token (text without / + #)")
                own = "dev/" + tok + "/"
            else:  # a credentials source stands in for the token: no own prefix known
                own = None
        # the adapter's own_prefix and prefixes (see platforms/blynk.py Adapter)
        self.own_prefix = own
        pres = [] if own is None else [own]
        for name in tokens:
            pres.append("dev/" + tokens[name] + "/")
        self.prefixes = pres

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
        # the drop reason of a reading prefix() gave None
        dev = r.get("device")
        return (("no token for sub-device %r in platform.gateway_tokens" % dev) if dev is not None
                else "an OAuth gateway session has no device of its own: send readings for "
                "sub-devices (user.read_devices)").encode()

    def route(self, topic):
        """dev/<token>/<rest> -> (rest, "dev/<token>/", sub-device name or None for our own)."""
        k = topic.find("/", 4)
        tok = topic[4:k] if k > 0 else ""
        pre = topic[:k + 1]
        dev = self.names.get(tok)
        if dev is None and pre != self.own_prefix:
            raise ValueError("downlink for an unknown sub-device token")
        topic = topic[k + 1:]
        if topic == "downlink/redirect":
            raise ValueError("redirect addressed to one device of a gateway session")
        return topic, pre, dev
