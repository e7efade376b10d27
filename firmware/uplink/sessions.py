# One device, several clouds at once (config `platforms`, docs/internals.md). The first
# platform is the app's own (app.adapter, app.client, app.publisher: OTA, the clock's TLS
# gate, everything a one-cloud config has); each other one is a Session here, with its own
# adapter, MQTT client and Publisher. Every platform that sends readings has its own cursor
# over the one outbox (outbox.Cursor): a record leaves flash once all of them have its
# PUBACK, and a cloud that is down holds back only its own cursor, never the others'
# delivery. Downlinks of every session go to the app's one command queue with cmd.platform
# set, and replies go back through the session they came from.
#
# Memory: a Session costs its adapter module's bytecode, this module, an MQTTClient and a
# Publisher and, with TLS, its mbedTLS session: `make bench BENCH_ARGS=twocloud` prints
# gc_free with one and two sessions.
import asyncio

from uplink import log

TYPE_CHECKING = False
if TYPE_CHECKING:  # names for the type checker only; MicroPython ignores annotations
    from typing import Any


class Session:
    """Another platform: adapter, client, publisher and its name (config platforms[i].name)."""

    # made in Sessions.start(); typed loosely, as App's are
    client: Any = None
    publisher: Any = None

    def __init__(self, app, pcfg):
        from uplink import platforms
        from uplink.context import Context

        self.app = app
        self.name = pcfg["name"]
        cfg = dict(app.cfg)
        cfg["platform"] = pcfg  # the adapter reads its own section as `platform`
        self.cfg = cfg
        self.ctx = Context(app, cfg, main=False)  # no OTA: updates come from the main cloud
        self.adapter = self.ctx.adapter = platforms.load(pcfg["kind"]).Adapter(cfg, self.ctx)
        self.auth_failures = 0
        self.publishes = self.adapter.publishes
        self._started = False

    def make_client(self):
        app = self.app
        self.client = self.ctx.make_client(
            lambda topic, payload, retained: app.on_message(topic, payload, retained, self),
            lambda event, detail=None: app.on_status(event, detail, self),
            self.on_connect)
        return self.client

    async def on_connect(self):
        # (subscriptions: registered in run() before the first connect, restored by the client)
        await self.adapter.on_connect(self.client)
        if self.app.cloud is not None:  # user.py's on_change is owed this cloud's current values
            await self.app.cloud.connected(self.adapter, self.client)

    async def run(self):
        # Boot-time steps of this cloud alone, retried here: a refusal or an outage of this
        # cloud must not stop the app (and with it the other clouds), as it would at the
        # main platform's prepare().
        app = self.app
        url = self.adapter.url
        if url[: url.find(":")] in ("mqtts", "wss", "https") and not self.cfg["platform"]["insecure"]:
            await app.clock.wait_valid()  # the certificate check needs the date (uplink.startup.clock)
        delay = 5
        while True:
            try:
                await self.adapter.prepare(self.ctx)
                break
            except Exception as e:
                log.error("platform", "%s: %s; trying again in %d s" % (self.name, e, delay))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 600)
        from uplink.app import subscribe_first

        if not self._started:  # (kept by App.keep: a run that failed later starts here again)
            await subscribe_first(self.adapter, self.client)
            await self.client.connect(retry=True)
            self._started = True
        if self.publisher is not None:
            await self.publisher.run()

    def health(self):
        return _health(self.client, self.publisher, self.auth_failures)


class Sessions:
    """The app's other platforms (config platforms[1:]) and what the app asks of them."""

    def __init__(self, app):
        ps = app.cfg["platforms"]
        self.app = app
        self.main = ps[0]["name"]
        self.extra = [Session(app, p) for p in ps[1:]]
        # outbox cursors: only platforms that send readings hold records back
        names = [s.name for s in self.extra if s.publishes]
        if app.adapter.publishes:
            names.insert(0, self.main)
        self.cursors = tuple(names)

    def get(self, name):
        for s in self.extra:
            if s.name == name:
                return s
        return None

    def reader(self, outbox, name):
        """What a publisher reads and acks: the outbox cursor of platform `name`, or, for
        a platform that sends no readings, a reader that never has any."""
        return outbox.cursor(name) or _NOTHING

    def start(self, outbox):
        from uplink.publisher import Publisher

        app = self.app
        # Each publisher reads its share of the batch, as app.main's does, and each client
        # gets its share of the MQTT window (Context.share): with a whole batch each, two TLS
        # sessions on the ESP32 model at 128k met MemoryError pauses every few seconds.
        batch = app.ctx.share(app.cfg["telemetry"]["batch"])
        for s in self.extra:
            c = s.make_client()
            if s.publishes:
                s.publisher = Publisher(outbox.cursor(s.name), s.adapter, c, batch, stamp=app.telemetry.stamp,
                                        kind=s.cfg["platform"]["kind"])
            app.keep("session " + s.name, s.run)

    def notify(self):
        for s in self.extra:
            if s.publisher is not None:
                s.publisher.notify()

    def kick(self):
        for s in self.extra:
            if s.client is not None:
                s.client.kick()

    def all_health(self):
        """Whether every platform has room for health keys in readings (Base.HEALTH)."""
        for s in self.extra:
            if not s.adapter.HEALTH:
                return False
        return True

    def health(self):
        """{name: where it stands}: connected, readings waiting for it, sent and acked."""
        app = self.app
        h = {self.main: _health(app.client, app.publisher, app.auth_failures)}
        for s in self.extra:
            h[s.name] = s.health()
        return h


def _health(client, publisher, auth_failures):
    h = {"connected": bool(client is not None and client.is_connected)}
    if publisher is not None and publisher.outbox is not _NOTHING:
        h["waiting"] = publisher.outbox.depth
        h["sent"] = publisher.sent
        h["acked"] = publisher.acked
        if publisher.set_aside:
            h["set_aside"] = publisher.set_aside
        if publisher.adapter.too_old:
            h["too_old"] = publisher.adapter.too_old
    if auth_failures:
        h["auth_failures"] = auth_failures
    return h


class _Nothing:
    # the outbox as a platform that sends no readings sees it (a Weightron watcher)
    depth = 0
    dropped = 0

    def read(self, after_id, n):
        return ()

    def ack(self, id):
        pass


_NOTHING = _Nothing()

