# One module per cloud behind one small interface (docs/internals.md, `uplink.platforms`).
# Only the selected platform's module is ever imported: bytecode lives in the heap.
import json

KINDS = ("thingsboard", "blynk", "weightron", "biotz")

# Compact JSON: every byte counts against Blynk's 1024-byte messages and the ESP32 heap.
SEP = (",", ":")


def load(kind):
    """The module of platform `kind` (imports that one only)."""
    if kind == "thingsboard":
        from uplink.platforms import thingsboard as m
    elif kind == "blynk":
        from uplink.platforms import blynk as m
    elif kind == "weightron":
        from uplink.platforms import weightron as m
    elif kind == "biotz":
        from uplink.platforms import biotz as m
    else:
        raise ValueError("unknown platform kind %r (known: %s)" % (kind, ", ".join(KINDS)))
    return m


class _Schemas:
    # A lazy {kind: SCHEMA} for config.parse(text, extra): looking up a kind imports only
    # that kind's module, and listing the kinds (for the error message) imports none.
    def __contains__(self, kind):
        return kind in KINDS

    def __iter__(self):
        return iter(KINDS)

    def __getitem__(self, kind):
        return load(kind).SCHEMA


SCHEMAS = _Schemas()


class Command:
    """A downlink turned into something the app or user.py acts on.

    name: reboot, set_interval, ping, status, redirect, attributes, write, firmware,
    set_time, or a user RPC method name. params: a dict (never None). reply_to: opaque to
    the app; give it back through adapter.reply(cmd, result)."""

    platform = None  # the app names the platform it came from: config platform.name or kind

    def __init__(self, name, params=None, reply_to=None, device=None):
        self.name = name
        self.params = {} if params is None else params
        self.reply_to = reply_to
        self.device = device  # gateway modes: the sub-device addressed, else None

    def __eq__(self, other):
        return (isinstance(other, Command) and self.name == other.name
                and self.params == other.params and self.reply_to == other.reply_to
                and self.device == other.device)

    def __repr__(self):
        return "Command(%r, %r, %r, device=%r)" % (self.name, self.params, self.reply_to, self.device)


# Well-known RPC / action names (any spelling the clouds' consoles tend to use) -> command.
WELL_KNOWN = {
    "reboot": "reboot", "restart": "reboot", "reset": "reboot",
    "setinterval": "set_interval", "set_interval": "set_interval",
    "ping": "ping",
    "status": "status", "getstatus": "status", "get_status": "status",
}


def command(method, params, reply_to=None, device=None):
    """Command for an RPC/action `method` with JSON `params` of any shape. Well-known names
    are normalised; set_interval always gets {"interval_s": n}; params that are not an
    object arrive as {"value": params}."""
    name = WELL_KNOWN.get(method.lower(), method)
    if params is None:
        params = {}
    elif not isinstance(params, dict):
        params = {"value": params}
    if name == "set_interval":
        v = params.get("interval_s", params.get("interval", params.get("value")))
        if isinstance(v, str):
            try:
                v = int(v)
            except ValueError:
                v = None
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
            raise ValueError("%s: expected a positive interval in seconds, got %s" % (method, dumps(params)))
        params = {"interval_s": int(v)}
    return Command(name, params, reply_to, device)


def dumps(obj):
    return json.dumps(obj, separators=SEP)


def loads(payload, what):
    """JSON from a downlink, or ValueError naming what was expected."""
    try:
        return json.loads(payload)
    except (ValueError, UnicodeError):
        raise ValueError("%s: not valid JSON: %s" % (what, _preview(payload)))


def loads_obj(payload, what):
    v = loads(payload, what)
    if not isinstance(v, dict):
        raise ValueError("%s: expected a JSON object, got %s" % (what, _preview(payload)))
    return v


def text(payload, what):
    try:
        return payload.decode() if isinstance(payload, (bytes, bytearray)) else str(payload)
    except UnicodeError:
        raise ValueError("%s: not UTF-8 text" % what)


def _preview(payload):
    p = bytes(payload[:40]) if isinstance(payload, (bytes, bytearray)) else str(payload)[:40]
    return repr(p) + ("..." if len(payload) > 40 else "")


def topic_ok(part):
    """A topic level we build from user data must not smuggle in wildcards or separators."""
    return part != "" and "/" not in part and "+" not in part and "#" not in part


def iso(ms):
    """Epoch milliseconds -> "2026-01-01T12:00:00Z" (".123" before the Z when ms are not 0).

    Pure arithmetic (days -> civil date, H. Hinnant's algorithm): no dependence on the port's
    epoch or time zone, and no floats (an ESP32 float cannot hold an epoch)."""
    s, frac = divmod(ms, 1000)
    days, rem = divmod(s, 86400)
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    y = yoe + era * 400 + (1 if m <= 2 else 0)
    out = "%04d-%02d-%02dT%02d:%02d:%02d" % (y, m, d, rem // 3600, rem // 60 % 60, rem % 60)
    return out + (".%03dZ" % frac if frac else "Z")


class Base:
    """What every adapter shares: call Base.__init__(self, cfg, ctx, default_url, ...) first.

    Sets cfg, ctx, url (platform.url or the kind's default), client_id (platform.client_id,
    else `client_id`, else the device name; at most 64 characters), max_payload
    (platform.max_payload when the kind has that key, else `max_payload`) and the
    platform.credentials source."""

    creds = None  # the platform.credentials source, when configured
    # Health keys in every reading when telemetry.health is not set: only where the platform
    # stores any key it is sent (ThingsBoard); Blynk and Biotz refuse or drop unknown keys.
    HEALTH = False
    publishes = True  # False: a watcher that sends no readings (Weightron without publish)
    gateway = None  # truthy: readings of sub-devices go out too (user.read_devices)
    keepalive = None  # seconds the cloud asks for, else platform.keepalive
    max_packet = 4096  # the largest MQTT packet the client takes in
    too_old = 0  # readings not sent: older than the cloud accepts (Blynk); in health

    def __init__(self, cfg, ctx, default_url, max_payload=65536, client_id=None):
        p = cfg["platform"]
        self.cfg = cfg
        self.ctx = ctx
        self.url = p.get("url") or default_url
        self.client_id = (p.get("client_id") or client_id or cfg["device"]["name"])[:64]
        self.max_payload = p.get("max_payload") or max_payload
        self.creds = credential_source(p)

    def relayed(self):
        """Whether the credentials come from the token relay (uplink.credentials)."""
        return self.creds is not None and self.creds.source == "relay"

    def require(self, key, hint):
        """platform.<key>, unless a credentials source stands in for it: ConfigError naming
        the key and where its value is found."""
        v = self.cfg["platform"].get(key)
        if not v and self.creds is None:
            from uplink import ConfigError

            raise ConfigError("config.json: platform.%s: missing: %s" % (key, hint))
        return v

    def make_client(self, ctx):
        """A client of the adapter's own in place of MQTT (Biotz over HTTP), or None."""
        return None

    async def prepare(self, ctx):
        """Boot-time steps before the first connect (ThingsBoard provisioning)."""

    def cloud_api(self):
        """The part uplink.cloud's calls go through (requests, events), or None: this cloud
        has none. Optional parts (a gateway, this) are objects of a class in a module of their
        own, made by the adapter on first need, using only the adapter's public names."""
        return None

    def explain(self, event, detail):
        """What a connection event's detail means on this cloud (Weightron's permissions)."""
        return detail

    def health_due(self):
        """Whether the next reading carries the health keys (ThingsBoard: not more often than
        its data-point limits leave room for)."""
        return True

    async def ready(self, client):
        """Awaited before a connection's first reading: the session's rules are known then.
        The messages the cloud allows in flight, or None (the client's window)."""
        return None

    def invalidate_credentials(self):
        """The broker refused our credentials: a relay token is fetched anew next time
        (call on the MQTT client's "auth_error")."""
        if self.creds is not None:
            self.creds.invalidate()


def credential_source(pcfg):
    """The `platform.credentials` source (uplink.credentials) when one is configured, else
    None: the platform's own keys are used as they are."""
    if pcfg.get("credentials") is None:
        return None
    from uplink import ConfigError, credentials

    try:
        return credentials.from_config(pcfg)
    except ValueError as e:  # a bad credentials section: safe mode with the key, not a crash
        raise ConfigError("config.json: %s" % e)


def too_big(n, size, limit):
    """The drop marker of encode(): (None, reason, n). These n readings cannot be sent on
    this platform at all; the app drops them, counts them and logs the reason."""
    return (None, ("reading of %d bytes exceeds the %d-byte message limit" % (size, limit)).encode(), n)


class Pack:
    """JSON pieces joined into messages of at most `room` bytes: "[a,b,c]" (or "{...}" with
    brackets="{}"). The one size-limit loop every adapter needs: add() what fits(), send
    what add() and take() hand back."""

    def __init__(self, room, brackets="[]"):
        self.room = room
        self.brackets = brackets
        self.parts = []
        self.size = 2

    def fits(self, piece):
        """Whether `piece` fits a message on its own."""
        return len(piece) + 2 <= self.room

    def full_for(self, piece):
        """Whether `piece` would push the pieces gathered so far over the limit."""
        return bool(self.parts) and self.size + 1 + len(piece) > self.room

    def add(self, piece):
        """Add a piece that fits(); returns the message completed first when the piece did
        not fit beside the others, else None."""
        done = self.take() if self.full_for(piece) else None
        self.size += len(piece) + (1 if self.parts else 0)
        self.parts.append(piece)
        return done

    def take(self, bare=False):
        """The gathered pieces as one message (text), or None; bare: a lone piece without
        brackets."""
        parts = self.parts
        if not parts:
            return None
        s = parts[0] if bare and len(parts) == 1 else self.brackets[0] + ",".join(parts) + self.brackets[1]
        self.parts = []
        self.size = 2
        return s

    def __len__(self):
        return len(self.parts)
