# Blynk gateway API (docs.blynk.io/en/blynk.cloud-mqtt-api/mqtt-gateway-api): one connection
# as mgmt_device with the gateway's token, or as an OAuth client; every device, the gateway
# itself too, is addressed as dev/<its token>/. Loaded by platforms/blynk.py (Adapter._gw)
# only when platform.gateway_tokens or an OAuth client is configured: its bytecode lives in
# the heap, and a plain device never pays for it.
from uplink import ConfigError  # not uplink.config: the app unloads that before adapters exist
from uplink.platforms import topic_ok


def setup(a, p):
    """The gateway half of Adapter.__init__: sub-device tokens, login kind, prefixes."""
    tokens = a._tokens = {}  # sub-device name -> token
    names = a._names = {}  # token -> sub-device name
    gw = p.get("gateway_tokens") or {}
    for name in gw:
        tok = gw[name]
        if not isinstance(tok, str) or not topic_ok(tok):
            raise ConfigError("config.json: platform.gateway_tokens.%s: expected a device "
                              "token (text without / + #)" % name)
        tokens[name] = tok
        names[tok] = name
    a.oauth = bool(p.get("oauth_client_id") or p.get("oauth_client_secret"))
    a.gateway = True  # called with gateway_tokens (now checked) or an OAuth client
    if a.oauth:
        if not (p.get("oauth_client_id") and p.get("oauth_client_secret")) and a._creds is None:
            raise ConfigError("config.json: platform.oauth_client_id and oauth_client_secret: "
                              "both are needed (Blynk console: the OAuth client's Client ID "
                              "and Client Secret)")
        if not tokens:
            raise ConfigError("config.json: platform.gateway_tokens: missing: an OAuth client "
                              "login is a gateway session; list {sub-device name: its token}")
        a._own = None  # an OAuth client session has no device of its own
    else:
        a.require("token", "the device's auth token (the gateway's own token in gateway mode)")
        tok = p.get("token")
        if tok:
            if not topic_ok(tok):
                raise ConfigError("config.json: platform.token: expected a device token (text without / + #)")
            a._own = "dev/" + tok + "/"
        else:  # a credentials source stands in for the token: no own prefix known
            a._own = None
    pres = [] if a._own is None else [a._own]
    for name in tokens:
        pres.append("dev/" + tokens[name] + "/")
    a._pres = pres


def login(a, p):
    if a.oauth:
        return (p["oauth_client_id"], p["oauth_client_secret"])
    return ("mgmt_device", p["token"])


def prefix(a, r):
    """dev/<token>/ of a reading's device; None when it cannot be sent."""
    dev = r.get("device")
    if dev is None:
        return a._own
    tok = a._tokens.get(dev)
    return None if tok is None else "dev/" + tok + "/"


def unsendable(r):
    # the drop reason of a reading prefix() gave None
    dev = r.get("device")
    return (("no token for sub-device %r in platform.gateway_tokens" % dev) if dev is not None
            else "an OAuth gateway session has no device of its own: send readings for "
            "sub-devices (user.read_devices)").encode()


def route(a, topic):
    """dev/<token>/<rest> -> (rest, "dev/<token>/", sub-device name or None for our own)."""
    k = topic.find("/", 4)
    tok = topic[4:k] if k > 0 else ""
    pre = topic[:k + 1]
    dev = a._names.get(tok)
    if dev is None and pre != a._own:
        raise ValueError("downlink for an unknown sub-device token")
    topic = topic[k + 1:]
    if topic == "downlink/redirect":
        raise ValueError("redirect addressed to one device of a gateway session")
    return topic, pre, dev
