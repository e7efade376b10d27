# What a platform adapter and an updater may use of the app, by name: one Context per cloud,
# the main platform's (App.ctx) and each other one's (uplink.sessions). Nothing else of the
# app is theirs to touch (docs/internals.md, "Rooms").
from uplink import ConfigError, transient

TYPE_CHECKING = False
if TYPE_CHECKING:  # names for the type checker only; MicroPython ignores annotations
    from typing import Any

CONFIG = "config.json"
# MQTT messages in flight: the publisher fills each message to 8 KB / window (publisher.py),
# so 1 KB messages carry a backlog as one array, as ThingsBoard's docs advise; the client's
# default 48 would cut them to ~170 B each. Several clouds share the 8 (Context.share).
WINDOW = 8


class Context:
    adapter: Any = None  # this cloud's adapter, set by its owner once made
    client: Any = None  # this cloud's client (MQTT, or Biotz's HTTP session): make_client
    ota: Any = None  # the main cloud's updater while it has work (uplink.ota.start .. done)

    def __init__(self, app, cfg, main=True):
        self._app = app
        self.cfg = cfg  # the config as this cloud sees it: its own section as `platform`
        self.board = app.board
        # the main cloud announces updates (platforms/thingsboard.py asks at every connect)
        self.ota_watch = main and (cfg.get("platform") or {}).get("kind") in ("thingsboard", "blynk")

    # -- what the app knows --------------------------------------------------------------
    @property
    def ip(self):
        w = self._app.wifi
        return w.ip if w else None

    def now_ms(self):
        """Epoch milliseconds now, or None while the clock is not known (uplink.clock)."""
        c = self._app.clock
        return c.now_ms() if c else None

    def fw(self):
        """(title, version) of the app running (App.fw)."""
        return self._app.fw()

    def user(self):
        """(user.py, read() calls that returned): what an update's trial asks (uplink.ota_trial)."""
        return self._app.user, self._app.telemetry.reads

    # -- what the app does for them ------------------------------------------------------
    def save_config(self, cfg=None):
        """Persist the config after a change to this cloud's section (a provisioned token).
        Rare (first boot), so the writer is the config checker's module, loaded for it."""
        with transient():
            from uplink import config

            config.save(self._app.cfg)

    def keep(self, name, fn):
        return self._app.keep(name, fn)

    def share(self, n):
        """This cloud's part of n (records a publisher reads at a time, messages a client
        keeps for a resend): n clouds hold about what one does (uplink.sessions)."""
        return max(1, n // len(self._app.cfg.get("platforms") or "1"))

    def new_client(self, **kw):
        """An MQTT client for this cloud: its URL, client id, CA, keepalive, packet size."""
        from uplink.mqtt import MQTTClient

        p = self.cfg["platform"]
        a = self.adapter
        ca = _read_file(p["ca"]) if p["ca"] else None
        kw.setdefault("window", max(2, self.share(WINDOW)))
        return MQTTClient(a.url, a.client_id, keepalive=a.keepalive or p["keepalive"], ca=ca,
                          insecure=p["insecure"], max_packet=a.max_packet,
                          cert=p.get("client_cert"), key=p.get("client_key"), **kw)

    def make_client(self, on_message, on_status, on_connect):
        """The session's client (the adapter's own, e.g. Biotz over HTTP, else MQTT)."""
        a = self.adapter
        c = a.make_client(self) or self.new_client(credentials=a.credentials)
        c.on_message = on_message
        c.on_status = on_status
        c.on_connect = on_connect
        self.client = c
        return c


def _read_file(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        raise ConfigError("%s: platform.ca: cannot read %r (is it on the board?)" % (CONFIG, path))
