# Composition root: config -> board -> Wi-Fi -> clock -> platform session -> tasks.
# Every other module gets what it needs from here, so each can be tested alone; adapters and
# updaters get only a Context (uplink.context). The way in and out is uplink.runner.
import asyncio
import gc
import sys

from uplink import log, transient
from uplink.context import Context

TYPE_CHECKING = False
if TYPE_CHECKING:  # names for the type checker only; MicroPython ignores annotations
    from typing import Any

RESET_DELAY_MS = 2000  # before a reset: a reply or a log line leaves first (runner's crash exit too)
HEALTHY_AFTER_S = 60  # = safemode.HEALTHY_AFTER_S; safemode itself is unloaded after boot
# A kept task (App.keep) that fails this many times in a row, each within STEADY_S of its
# start, takes the crash path: restarting it again would only hide a broken board.
TASK_FAILS = 5
STEADY_S = 60


class App:
    # set up in main(); typed loosely so the checker does not demand None checks everywhere
    wifi: Any = None
    clock: Any = None
    outbox: Any = None
    client: Any = None
    publisher: Any = None
    adapter: Any = None
    boots: Any = None
    cloud: Any = None  # uplink.cloud, when user.py imported it
    sessions: Any = None  # uplink.sessions: the other platforms, when the config names several
    safe_mode_reason = None
    fatal = None  # (task name, exception) of a kept task that failed for good: supervise raises it
    _fw = None
    _acked = _since = 0  # publisher.acked, and log.uptime_s() when it last moved (stuck())

    def __init__(self, cfg, board):
        from uplink.commands import Commands
        from uplink.telemetry import Telemetry

        self.cfg = cfg
        self.board = board
        self.ctx = Context(self, cfg)  # the main cloud's
        self.telemetry = Telemetry(self)
        self.commands = Commands(self)
        self.user = _import_user()
        self.auth_failures = 0

    def fw(self):
        """(title, version) of the app running: its OTA bundle's, else this build's. Read once:
        an install into the other slot during this run does not change what runs."""
        if self._fw is None:
            with transient():  # an updater loads uplink.ota again when it has work
                from uplink import ota

                self._fw = ota.running(self.board.name)
        return self._fw

    # -- downlinks -----------------------------------------------------------------------
    def on_message(self, topic, payload, retained, s=None):
        # s: the uplink.sessions.Session of another platform the downlink came from
        try:
            cmd = (s or self).adapter.handle(topic, payload, retained)
        except Exception as e:  # malformed downlink: report, never crash the reader
            log.warn("downlink", "ignored message on %s: %s" % (topic, e))
            return
        if cmd is not None and cmd.name == "ota":  # an update announced: the updater's alone
            cmd = self._ota(cmd) if s is None and self.ctx.ota_watch else None
        if cmd is None:
            return
        cmd.platform = s.name if s else self.cfg["platform"].get("name") or self.cfg["platform"]["kind"]
        if self.cloud is not None and self.cloud.take(cmd):
            return  # (a change for user.py's cloud.on_change callback)
        self.commands.put(cmd)

    def session_of(self, cmd):
        """The platform a command came from: this app (the main one), or a Session."""
        s = self.sessions.get(cmd.platform) if self.sessions else None
        return s or self

    # -- updates (uplink.ota: loaded only while it has work) -------------------------------
    async def ota_at_boot(self):
        """Update work left for this boot runs now, before any session, while the heap is whole."""
        t = transient()
        from uplink import ota

        if not await ota.at_boot(self.ctx, t):
            ota = None
            t.end()
        if self.adapter.relayed():
            self.adapter.creds.on_ota = self._relay_offer

    def _ota(self, cmd):
        t = None
        if self.ctx.ota is None:
            # A last updater's code is freed here, not by the collection a failed allocation
            # runs inside the import below: C stack slots left from its run can still point
            # at it there (the GC is conservative), and the import met a full heap.
            gc.collect()
            t = transient()
        try:
            from uplink import ota

            return ota.take(self.ctx, cmd, t)
        except MemoryError:  # the cloud announces it again at the next connect
            if t is not None and self.ctx.ota is None:
                t.end()
            log.warn("ota", "an update is announced, but its code does not fit the heap now")
            return None

    def _relay_offer(self, offer):
        with transient():  # the relay offers an update with a token: a job for the next boot
            from uplink import ota_relay

            ota_relay.offer(self.ctx, offer)

    async def reboot_soon(self):
        await asyncio.sleep_ms(RESET_DELAY_MS)  # let the reply leave first
        self.board.reset()

    # -- connection status ----------------------------------------------------------------
    def on_status(self, event, detail=None, s=None):
        # s: the uplink.sessions.Session of another platform; its messages name it
        o = s or self
        tag = "mqtt" if s is None else "mqtt " + s.name
        detail = o.adapter.explain(event, detail)  # what a refusal means (Weightron permissions)
        if event == "auth_error":
            o.auth_failures += 1
            o.adapter.invalidate_credentials()  # a refused relay token must not be offered again
            log.error(tag, "broker refused our credentials (%s): check the token/password/client certificate"
                      % detail)
        elif event in ("connected", "disconnected", "error", "backoff"):
            (log.info if event == "connected" else log.warn)(tag, "%s %s" % (event, "" if detail is None else detail))
        if event == "connected":
            o.auth_failures = 0

    async def on_connect(self):
        # (the subscriptions were registered before the first connect, subscribe_first, and
        # the client restores them on every reconnect)
        await self.adapter.on_connect(self.client)
        if self.cloud is not None:
            await self.cloud.connected(self.adapter, self.client)

    def network_back(self):
        # back on Wi-Fi, MQTT tries at once instead of sitting out a backoff grown in the outage
        if self.client is not None:
            self.client.kick()
        if self.sessions:
            self.sessions.kick()

    def make_client(self):
        return self.ctx.make_client(self.on_message, self.on_status, self.on_connect)

    async def main(self):
        from uplink import platforms
        from uplink.outbox import Outbox
        from uplink.publisher import Publisher

        self.keep("health", self.mark_healthy)
        self.fw()  # before a download can put another app in the other slot
        self.adapter = self.ctx.adapter = platforms.load(self.cfg["platform"]["kind"]).Adapter(self.cfg, self.ctx)
        main = self.cfg["platform"].get("name") or self.cfg["platform"]["kind"]
        cursors = (main,)  # named: a platform added or removed later keeps its place (outbox.py)
        if self.cfg.get("platforms") and len(self.cfg["platforms"]) > 1:
            from uplink.sessions import Sessions

            self.sessions = Sessions(self)
            cursors = self.sessions.cursors
        ob = self.cfg["outbox"]
        # readings less than hold_ms apart go to flash in batches (flash wear): outbox.py
        self.outbox = Outbox(ob["dir"], ob["max_bytes"], hold_ms=ob["hold_ms"], cursors=cursors)
        self.board.on_leave = self.outbox.flush  # every reset, Ctrl-C and crash: Board.leave
        from uplink.boots import Boots

        self.boots = Boots()
        n = self.outbox.depth
        log.info("outbox", "%d %s waiting, %d dropped so far" % (n, "reading" if n == 1 else "readings",
                                                               self.outbox.dropped))
        with transient():  # boot-only code: Wi-Fi and the clock up, then it leaves the heap
            from uplink import startup

            await startup.network(self)
            await startup.clock(self)
            startup = None  # a local of this frame, which lives as long as the app, would keep it
        await self.ota_at_boot()
        with transient():  # first-boot steps (ThingsBoard provisioning) leave the heap after
            await self.adapter.prepare(self.ctx)
        self.client = self.make_client()
        reader = self.sessions.reader(self.outbox, main) if self.sessions else self.outbox
        batch = self.ctx.share(self.cfg["telemetry"]["batch"])
        self.publisher = Publisher(reader, self.adapter, self.client, batch, stamp=self.telemetry.stamp,
                                   kind=self.cfg["platform"]["kind"])
        self.cloud = sys.modules.get("uplink.cloud")  # imported by user.py only when it uses it
        if self.cloud is not None:
            self.cloud.attach(self)
        self.keep("telemetry", self.telemetry.run)
        self.keep("commands", self.commands.run)
        if self.sessions:  # the other clouds connect on their own: one down stops no other
            self.sessions.start(self.outbox)
        await subscribe_first(self.adapter, self.client)
        # the supervisor (watchdog, stuck board) runs while the first connect is still tried
        self.keep("connect", self.connect)
        self.keep("publish", self.publisher.run)
        await self.supervise()

    async def connect(self):
        await self.client.connect(retry=True)

    def keep(self, name, fn):
        """Run fn() as a task that outlives its failures: one that raises (a MemoryError in
        its loop or its waits) is logged with its traceback and started again; TASK_FAILS
        quick failures in a row end the app through the crash path (supervise)."""
        return asyncio.create_task(self._kept(name, fn))

    async def _kept(self, name, fn):
        fails = 0
        while True:
            t = log.uptime_s()
            try:
                await fn()
                return
            except Exception as e:
                fails = fails + 1 if log.uptime_s() - t < STEADY_S else 1
                if fails >= TASK_FAILS:
                    self.fatal = (name, e)
                    return
                try:
                    log.exc(name, "task failed (%d in a row); restarting it" % fails, e)
                    sys.print_exception(e)
                except MemoryError:
                    pass
            e = None  # noqa: F841  (MicroPython keeps it: its traceback must not outlive the failure)
            gc.collect()
            await asyncio.sleep_ms(1000)

    async def supervise(self):
        wdt = self.board.watchdog(30000)
        fails = 0
        while True:
            if self.fatal is not None:
                raise RuntimeError("task %s failed %d times in a row: %r" % (self.fatal[0], TASK_FAILS, self.fatal[1]))
            try:
                if self.stuck():
                    log.error("app", "no reading acknowledged for %d s with the network up: resetting"
                              % (log.uptime_s() - self._since))
                    self.board.reset()  # (Board.leave writes the held readings first)
                self.outbox.flush()  # persist acknowledged progress now and then, not per ack
                # called every 5 s, log.uptime_s() keeps the uptime right across the ticks wrap
                # (it must be called at least every 6 days)
                log.uptime_s()
                if self.boots is not None:
                    self.boots.tick(self.clock.now_ms() if self.clock else None)
                fails = 0
            except Exception as e:  # a MemoryError: the watchdog is fed all the same
                fails += 1
                if fails >= TASK_FAILS:
                    raise
                log.exc("supervise", "round failed", e)
            wdt.feed()
            await asyncio.sleep(5)

    def stuck(self):
        """Readings wait, the network is up, and none has been acknowledged for
        device.offline_reset_s: a board in a state it does not leave by itself."""
        limit = self.cfg["device"].get("offline_reset_s")
        p = self.publisher
        now = log.uptime_s()
        w = self.wifi
        if (not limit or p is None or p.acked != self._acked or not p.outbox.depth
                or (w is not None and not w.connected)):
            self._acked = p.acked if p is not None else 0
            self._since = now
            return False
        return now - self._since >= limit

    async def mark_healthy(self):
        # Running this long without a crash is healthy, cloud or no cloud: a router outage
        # is not a crash loop.
        await asyncio.sleep(HEALTHY_AFTER_S)
        with transient():
            from uplink import safemode

            safemode.healthy()


async def subscribe_first(adapter, client):
    # Registered before the first connect, the subscriptions are written with CONNECT and
    # acknowledged before on_connect and before any reading goes out (uplink.mqtt). Made in
    # on_connect, they left a window in which the device was online, publishing, and deaf:
    # a command sent the moment it showed up was lost.
    for topic, qos in adapter.subscriptions():
        await client.subscribe(topic, qos)


def _import_user():
    try:
        import user

        return user
    except ImportError as e:
        # only user.py missing is "no user code": a module it imports that is missing (a
        # driver left out of a bundle) is a crash, which rolls an update back
        if str(e) not in ("no module named 'user'", "No module named 'user'"):
            raise
        return _NoUser()


class _NoUser:
    def read(self):
        return {}
