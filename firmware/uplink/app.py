# Composition root: config -> board -> Wi-Fi -> clock -> platform session -> tasks.
# Every other module gets what it needs from here, so each can be tested alone.
import asyncio
import gc
import json
import sys
import time

from uplink import VERSION, ConfigError, log

TYPE_CHECKING = False
if TYPE_CHECKING:  # names for the type checker only; MicroPython ignores annotations
    from typing import Any

CONFIG = "config.json"

RESET_DELAY_MS = 2000
WINDOW = 8  # MQTT messages in flight (see _client)
HEALTHY_AFTER_S = 60  # = safemode.HEALTHY_AFTER_S; safemode itself is unloaded after boot
COMMAND_QUEUE = 8  # downlinks waiting for the handler; more are refused, not buffered
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
    ota: Any = None  # the OTA updater, while it has work (start_ota .. ota_done)
    ota_bad = None  # the sha256 of a bundle that failed this run: not tried again
    cloud: Any = None  # uplink.cloud, when user.py imported it
    sessions: Any = None  # uplink.sessions: the other platforms, when the config names several
    safe_mode_reason = None
    fatal = None  # (task name, exception) of a kept task that failed for good: supervise raises it
    _fw = None
    _acked = _since = 0  # publisher.acked, and log.uptime_s() when it last moved (stuck())

    def __init__(self, cfg, board):
        self.cfg = cfg
        self.board = board
        t = cfg["telemetry"]
        self.interval_s = t["interval_ms"] / 1000 if t["interval_ms"] else t["interval_s"]
        self.commands = []
        self.command_ready = asyncio.Event()
        self.telemetry_wake = asyncio.Event()
        self.user = _import_user()
        self.auth_failures = 0
        # the main cloud announces updates (platforms/thingsboard.py asks at every connect)
        self.ota_watch = (cfg.get("platform") or {}).get("kind") in ("thingsboard", "blynk")

    # -- context for platform adapters ---------------------------------------------------
    @property
    def version(self):
        return self.fw()[1]

    def fw(self):
        """(title, version) of the app running: its OTA bundle's, else this build's. Read once:
        an install into the other slot during this run does not change what runs."""
        if self._fw is None:
            from uplink import ota

            self._fw = ota.running(self.board.name)
            if self.ota is None:
                _unload("ota")  # an updater loads it again when it has work
        return self._fw

    @property
    def ip(self):
        return self.wifi.ip if self.wifi else None

    def save_config(self, cfg):
        """Persist a changed config (e.g. a provisioned token): temp file + rename."""
        import os

        doc = cfg
        if cfg.get("platforms"):  # several clouds: `platform` is platforms[0] (config.parse)
            doc = dict(cfg)
            del doc["platform"]
        tmp = CONFIG + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.rename(tmp, CONFIG)
        self.cfg = cfg

    # -- health --------------------------------------------------------------------------
    def health(self):
        gc.collect()
        h = {
            "uptime_s": log.uptime_s(),  # since boot, right across the ticks wrap
            "outbox_depth": self.outbox.depth if self.outbox else 0,
            "dropped": self.outbox.dropped if self.outbox else 0,
            "fw_version": self.version,  # the OTA bundle's (uplink.ota.running)
        }
        h.update(self.board.memory())  # gc_free; on the ESP32 also idf_free, idf_largest
        rssi = self.wifi.rssi() if self.wifi else None
        if rssi is not None:
            h["rssi"] = rssi
        t = self.board.chip_temperature()
        if t is not None:
            h["chip_temp"] = t
        if self.auth_failures:
            h["auth_failures"] = self.auth_failures
        if self.publisher is not None and self.publisher.set_aside:
            h["set_aside"] = self.publisher.set_aside  # readings the cloud refused (outbox aside)
        if self.safe_mode_reason:  # the first run after safe mode says why it was there
            h["safe_mode"] = self.safe_mode_reason
        if self.sessions:
            h["platforms"] = self.sessions.health()
        return h

    # -- telemetry -----------------------------------------------------------------------
    def wake_telemetry(self):
        self.telemetry_wake.set()

    def take_reading(self):
        values = {}
        health = self.cfg["telemetry"]["health"]
        if health is None:  # not set: where the platforms have room for the keys (platforms.Base.HEALTH)
            health = getattr(self.adapter, "HEALTH", False) and (not self.sessions or self.sessions.all_health())
        if health:
            values.update(self.health())
        try:
            values.update(self.user.read() or {})
        except Exception as e:  # a broken sensor must not stop health telemetry
            log.exc("user", "read() failed", e)
        _drop_unencodable(values)
        return self._mark({"values": values})

    def _mark(self, reading):
        # the time now, or (clock not known yet) this boot and its uptime: uplink.boots
        now = self.clock.now_ms() if self.clock else None
        if self.boots is None:
            reading["ts"] = now
            return reading
        return self.boots.mark(reading, now)

    def stamp(self, reading, final=False):
        """For the publisher: a stored reading's time, once it can be known (uplink.boots)."""
        if self.boots is None:
            return True
        return self.boots.stamp(reading, self.clock.now_ms() if self.clock else None, final)

    def store(self, reading):
        try:
            self.outbox.put(json.dumps(reading).encode())
        except (ValueError, OSError) as e:  # too big for a record, or the flash failed
            log.error("outbox", "reading not stored: %s" % e)
            return
        self.publisher.notify()
        if self.sessions:
            self.sessions.notify()

    def take_device_readings(self, reading):
        # gateway modes: user.read_devices() -> {sub-device name: values}
        try:
            per_device = getattr(self.user, "read_devices")() or {}
        except Exception as e:
            log.exc("user", "read_devices() failed", e)
            return
        for name in per_device:
            values = per_device[name]
            if isinstance(values, dict):
                _drop_unencodable(values)
            r = {"values": values, "device": name}
            for k in ("ts", "boot", "up"):  # the same time as the device's own reading
                if k in reading:
                    r[k] = reading[k]
            self.store(r)

    async def telemetry_task(self):
        # sub-device readings only where the platform runs a gateway session (adapter.gateway)
        gateway = hasattr(self.user, "read_devices") and getattr(self.adapter, "gateway", None)
        if not getattr(self.adapter, "publishes", True) and not (self.sessions and self.sessions.cursors):
            return  # a watcher (Weightron without publish = true) sends no readings
        while True:
            try:
                reading = self.take_reading()
                self.store(reading)
                if gateway:
                    self.take_device_readings(reading)
            except Exception as e:
                # a MemoryError while taking or storing a reading: lose this reading, not
                # every later one (this task ending would stop all telemetry)
                log.exc("telemetry", "reading skipped", e)
                gc.collect()
            self.telemetry_wake.clear()
            try:  # (a MemoryError here ends this run of the task: App.keep starts it again)
                await asyncio.wait_for(self.telemetry_wake.wait(), self.interval_s)
            except asyncio.TimeoutError:
                pass

    # -- downlinks -----------------------------------------------------------------------
    def on_message(self, topic, payload, retained, s=None):
        # s: the uplink.sessions.Session of another platform the downlink came from
        try:
            cmd = (s or self).adapter.handle(topic, payload, retained)
        except Exception as e:  # malformed downlink: report, never crash the reader
            log.warn("downlink", "ignored message on %s: %s" % (topic, e))
            return
        if cmd is not None and (cmd.name == "ota" or (cmd.name == "firmware" and cmd.device is None
                                                      and self.ota_watch)):
            # a firmware update announced (uplink.ota_tb, ota_blynk): from the main cloud only
            cmd = self._ota_take(cmd) if s is None and self.ota_watch else None
        if cmd is None:
            return
        cmd.platform = s.name if s else self.cfg["platform"].get("name") or self.cfg["platform"]["kind"]
        if self.cloud is not None and self.cloud.take(cmd):
            return  # (a change for user.py's cloud.on_change callback)
        if len(self.commands) >= COMMAND_QUEUE:
            log.warn("downlink", "command queue full: %s refused" % cmd.name)
            return
        self.commands.append(cmd)
        self.command_ready.set()

    async def command_task(self):
        from uplink import commands

        while True:
            await self.command_ready.wait()
            self.command_ready.clear()
            while self.commands:
                cmd = self.commands.pop(0)
                try:
                    result = await commands.execute(self, cmd)
                except Exception as e:
                    log.warn("cmd", "%s failed: %s" % (cmd.name, e))
                    result = {"error": str(e)}
                else:  # a D line: off with device.console "info"
                    log.cmd(cmd.name if cmd.device is None else "%s %s" % (cmd.device, cmd.name), cmd.params, result)
                await self._reply(cmd, result)

    def session_of(self, cmd):
        """The platform a command came from: this app (the main one), or a Session."""
        s = self.sessions.get(cmd.platform) if self.sessions else None
        return s or self

    async def _reply(self, cmd, result):
        try:
            s = self.session_of(cmd)
            r = s.adapter.reply(cmd, result)
            if r is not None:
                await s.client.publish(r[0], r[1], qos=0)
        except Exception as e:
            log.warn("cmd", "reply to %s not sent: %s" % (cmd.name, e))

    async def ota_at_boot(self):
        """An update download left for this boot runs now, before any session (the heap is
        whole). Its modules leave the heap after: done in a frame of its own, since a local in
        main()'s frame, which lives as long as the app, would keep them (12 KB on the model)."""
        p = self.cfg["platform"]
        if p["kind"] == "blynk":  # a Blynk.Air download
            from uplink import ota_fetch

            await ota_fetch.at_boot(self)
            ota_fetch = None
            _unload("ota_fetch", "https")
        elif (p.get("credentials") or {}).get("source") == "relay":  # a bundle `uplink ota` left
            from uplink import ota_relay

            if await ota_relay.at_boot(self):
                self.ota = ota_relay.Updater(self)
                self.keep("ota", self.ota.run)
            else:
                ota_relay = None
                _unload("ota_relay", "ota_fetch", "ota_tb", "ota")
            self.adapter._creds.on_ota = self._relay_offer
        if self.ota_watch:
            from uplink import ota

            if ota.owed():
                self.start_ota()
            else:
                ota = None
                _unload("ota")

    def start_ota(self):
        """The main cloud's updater, loaded only when it has work (an announcement; a trial, a
        rollback or a failure to report at boot): ota_tb + ota are ~9 KB of heap on the ESP32
        model, ota_blynk 2 KB more, that a device with nothing to update does not carry."""
        if self.cfg["platform"]["kind"] == "blynk":
            from uplink.ota_blynk import Updater
        else:
            from uplink.ota_tb import Updater
        self.ota = Updater(self)
        self.keep("ota", self.ota.run)
        return self.ota

    def ota_done(self, u):
        """The updater `u` has nothing left to do: its code leaves the heap."""
        if self.ota is u:
            self.ota = None
            _unload("ota_blynk", "ota_relay", "ota_tb", "ota")

    def _ota_take(self, cmd):
        try:
            if self.ota is None:
                # A last updater's code (ota_done) is freed here, not by the collection a
                # failed allocation runs deep inside the import below: there, C stack slots
                # left over from its run can still point at it (the GC is conservative), and
                # the import met a full heap 3 runs in 5 (test_ota_blynk refusals).
                gc.collect()
            u = self.ota or self.start_ota()
        except MemoryError:  # the cloud announces it again at the next connect
            log.warn("ota", "an update is announced, but its code does not fit the heap now")
            return None
        return u.take(cmd)

    def _relay_offer(self, offer):
        from uplink import ota_relay  # loaded only when the relay offers an update

        ota_relay.offer(self, offer)

    async def reboot_soon(self):
        await asyncio.sleep_ms(RESET_DELAY_MS)  # let the reply leave first
        self.board.reset()

    # -- connection status ----------------------------------------------------------------
    def on_status(self, event, detail=None, s=None):
        # s: the uplink.sessions.Session of another platform; its messages name it
        o = s or self
        tag = "mqtt" if s is None else "mqtt " + s.name
        explain = getattr(o.adapter, "explain", None)
        if explain is not None:  # what a refusal means on this cloud (Weightron permissions)
            detail = explain(event, detail)
        if event == "auth_error":
            o.auth_failures += 1
            invalidate = getattr(o.adapter, "invalidate_credentials", None)
            if invalidate is not None:
                invalidate()  # a relay token the broker refused must not be offered again
            log.error(tag, "broker refused our credentials (%s): check the token/password" % detail)
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

    # -- startup -------------------------------------------------------------------------
    async def start_network(self):
        if self.board.backend == "host" and not self.cfg["wifi"]["networks"]:
            # the PC is already online: no Wi-Fi manager to keep in the heap
            self.wifi = _Wired(self.board.wlan())
            return
        from uplink.wifi import Wifi, WifiError

        self.wifi = Wifi(self.board, self.cfg["wifi"]["networks"], self.cfg["wifi"]["timeout_s"])
        delay = 2
        while True:
            try:
                await self.wifi.connect()
                break
            except WifiError as e:
                log.error("wifi", "%s; retrying in %d s" % (e, delay))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60)
        log.info("wifi", "up, ip %s" % self.wifi.ip)
        # back on Wi-Fi, MQTT tries at once instead of sitting out a backoff grown in the outage
        self.wifi.on_up = self._network_back
        self.keep("wifi", self.wifi.run)

    def _network_back(self):
        if self.client is not None:
            self.client.kick()
        if self.sessions:
            self.sessions.kick()

    async def start_clock(self):
        from uplink.clock import Clock

        ntp = self.cfg["ntp"]
        self.clock = Clock(self.board, ntp["servers"], ntp["timeout_ms"], ntp["resync_s"])
        if ntp["servers"]:
            self.keep("clock", self.clock.run)
        else:  # e.g. the host board, whose clock is the PC's
            log.info("clock", "no NTP servers configured: the board's own clock is used")
        url = self.adapter.url
        if url[: url.find(":")] in ("mqtts", "wss", "https") and not self.cfg["platform"]["insecure"]:
            # Certificate validity checks need the real date, so the platform's own time
            # (ThingsBoard getTime, Blynk utc) cannot help here: it only comes over the
            # connection. NTP must answer, or the RTC must be set already (soft reset).
            if not self.clock.valid():
                log.info("clock", "waiting for the time before TLS")
                self.clock.blocked_hint = ("; TLS to the platform waits for it (the certificate "
                                           "check needs the date): UDP port 123 must reach them")
            await self.clock.wait_valid()
            self.clock.blocked_hint = Clock.blocked_hint

    def _client(self, s=None, **kw):
        # s: a uplink.sessions.Session, for another platform's client
        from uplink.mqtt import MQTTClient

        o = s or self
        p = o.cfg["platform"]
        ca = _read_file(p["ca"]) if p["ca"] else None
        keepalive = getattr(o.adapter, "keepalive", None) or p["keepalive"]
        # a window of 8: the publisher fills each message to 8 KB / window (publisher.py), so
        # 1 KB messages carry telemetry.batch readings as one array, as ThingsBoard's docs
        # advise for a backlog; the client's default 48 would cut them to ~170 B each. Several
        # clouds share those 8 (uplink.sessions): each keeps what it sent until the PUBACK.
        kw.setdefault("window", max(2, self.share(WINDOW)))
        return MQTTClient(o.adapter.url, o.adapter.client_id, keepalive=keepalive, ca=ca,
                          insecure=p["insecure"], max_packet=getattr(o.adapter, "max_packet", 4096), **kw)

    def share(self, n):
        """Each cloud's part of n (records a publisher reads at a time, messages a client keeps
        for a resend): n clouds hold about what one does (uplink.sessions)."""
        return max(1, n // len(self.cfg.get("platforms") or "1"))

    async def open_client(self, user, password):
        """A connected client with these credentials, for a platform's one-off exchanges
        (ThingsBoard provisioning). One attempt; the caller disconnects it."""
        c = self._client(user=user, password=password)
        await c.connect()
        return c

    def make_client(self):
        mk = getattr(self.adapter, "make_client", None)  # Biotz transport http
        c = mk(self) if mk is not None else None
        if c is None:
            c = self._client(credentials=self.adapter.credentials)
        c.on_message = self.on_message
        c.on_status = self.on_status
        c.on_connect = self.on_connect
        return c

    async def main(self):
        from uplink import platforms
        from uplink.outbox import Outbox
        from uplink.publisher import Publisher

        self.keep("health", self.mark_healthy)
        self.fw()  # before a download can put another app in the other slot
        self.adapter = platforms.load(self.cfg["platform"]["kind"]).Adapter(self.cfg, self)
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
        log.info("outbox", "%d readings waiting, %d dropped so far" % (self.outbox.depth, self.outbox.dropped))
        await self.start_network()
        await self.start_clock()
        await self.ota_at_boot()
        prepare = getattr(self.adapter, "prepare", None)
        if prepare is not None:
            await prepare(self)
        self.client = self.make_client()
        reader = self.sessions.reader(self.outbox, main) if self.sessions else self.outbox
        batch = self.share(self.cfg["telemetry"]["batch"])
        self.publisher = Publisher(reader, self.adapter, self.client, batch, stamp=self.stamp)
        self.cloud = sys.modules.get("uplink.cloud")  # imported by user.py only when it uses it
        if self.cloud is not None:
            self.cloud.attach(self)
        self.keep("telemetry", self.telemetry_task)
        self.keep("commands", self.command_task)
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
        from uplink import safemode

        safemode.healthy()
        _unload("safemode")


class _Wired:
    """The host board's link: always up, no RSSI."""

    connected = True

    def __init__(self, wlan):
        self.ip = wlan.ifconfig()[0]

    def rssi(self):
        return None


async def subscribe_first(adapter, client):
    # Registered before the first connect, the subscriptions are written with CONNECT and
    # acknowledged before on_connect and before any reading goes out (uplink.mqtt). Made in
    # on_connect, they left a window in which the device was online, publishing, and deaf:
    # a command sent the moment it showed up was lost.
    for topic, qos in adapter.subscriptions():
        await client.subscribe(topic, qos)


def _drop_unencodable(values):
    # NaN/inf (a failed sensor read) and objects JSON has no form for: MicroPython's
    # json.dumps writes them as they print ('nan', '<object>'), the record is then not JSON,
    # and the publisher drops the whole reading as corrupt. Drop only the bad value.
    for k in list(values):
        v = values[k]
        if isinstance(v, float) and (v != v or v - v != 0):
            bad = True
        else:
            bad = not isinstance(k, str) or not isinstance(v, (int, float, str, bool, list, dict, type(None)))
        if bad:
            log.warn("user", "read() value %r = %r is not JSON: left out" % (k, v))
            del values[k]


def _read_file(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        raise ConfigError("%s: platform.ca: cannot read %r (is it on the board?)" % (CONFIG, path))


def _import_user():
    try:
        import user

        return user
    except ImportError:
        return _NoUser()


class _NoUser:
    def read(self):
        return {}


def load_config():
    from uplink import config, platforms

    # SCHEMAS imports only the configured platform's module: the others would cost heap
    return config.load(CONFIG, platforms.SCHEMAS)


def _unload(*names):
    # Boot-only modules leave the heap once boot is done: on an ESP32 the bytecode of every
    # imported .mpy lives in RAM, and the config checker alone is several KB of it.
    import uplink

    for name in names:
        sys.modules.pop("uplink." + name, None)
        if name in uplink.__dict__:
            delattr(uplink, name)
    gc.collect()


HOLD = "hold"  # = main.py's HOLD: one boot in maintenance, no app, no watchdog


def run():
    """Entry point from main.py. A crash, or an unexpected error at boot (a full filesystem,
    no memory), resets the board after a delay and counts for safe mode; safe mode waits,
    then resets. Returns (to the REPL) only on Ctrl-C."""
    from uplink import board as boardmod
    from uplink import safemode

    board = None
    try:
        try:
            cfg = load_config()
        except Exception as e:
            # ConfigError: safe mode; anything else (no memory for the platform module): a
            # crash, counted. Either once the board is known and the count checked: a config
            # that fails at every boot must still end in safe mode, not a reset loop
            cfg = e
        board = boardmod.load(cfg["device"]["board"] if isinstance(cfg, dict) else boardmod.DEFAULT)
        cause = board.reset_cause()
        safemode.enter_boot(cause)
        if not isinstance(cfg, dict):
            raise cfg
        last = safemode.last_reason()
    except KeyboardInterrupt:
        log.warn("boot", "stopped by Ctrl-C")
        return
    except (safemode.SafeMode, ConfigError) as e:
        _safe_mode(board, str(e))
        return
    except Exception as e:
        _crash(board, "boot failed", e)
        return
    del safemode
    _unload("config", "safemode")
    log.level = log.LEVELS.index(cfg["device"]["console"])
    log.info("boot", "uplink %s on %s (%s), reset cause %s" % (VERSION, board.name, cfg["device"]["name"], cause))
    if last:
        log.warn("boot", "back from safe mode (%s)" % last)
    try:
        app = App(cfg, board)
        app.safe_mode_reason = last
        asyncio.run(app.main())
        raise RuntimeError("the app returned")
    except KeyboardInterrupt:
        _interrupted(board)
    except ConfigError as e:
        _safe_mode(board, str(e))
    except Exception as e:
        _crash(board, "app crashed", e)


def _crash(board, what, e):
    """A crash exit: logged, counted for safe mode, then a reset after RESET_DELAY_MS (a
    crash loop must not spin at full speed)."""
    reason = "%s: %s: %s" % (what, type(e).__name__, e)
    if board is not None:
        board.leave()
    try:
        log.error("boot", reason)
        sys.print_exception(e)
        from uplink import safemode

        counted = safemode.crashed(reason)
    except Exception:  # MemoryError: what matters now is the reset
        counted = False
    if not counted:
        # a count that cannot be stored (full filesystem) cannot stop a crash loop: wait as
        # long as safe mode would before each reset instead
        _safe_mode(board, reason + " (the crash count could not be stored)")
        return
    try:
        time.sleep_ms(RESET_DELAY_MS)
    except KeyboardInterrupt:
        _interrupted(board)
        return
    _reset(board)


def _reset(board):
    if board is None:
        from uplink import board as boardmod

        board = boardmod.load(boardmod.DEFAULT)
    board.reset()


def _interrupted(board):
    """Ctrl-C: back to the REPL. An ESP32 watchdog the app armed cannot be stopped and
    would bite the user there, and a machine.Timer feeding it dies at the next soft reset
    (ports/esp32/machine_timer.c: a finaliser deinits it, run by gc_sweep_all in main.c's
    soft_reset_exit), which is what mpremote does first. So reset into the maintenance hold:
    the REPL, with no app and no watchdog, until the next reset."""
    log.warn("boot", "stopped by Ctrl-C")
    if board is not None:
        board.leave()
    if board is None or board.armed_watchdog() is None or not board.watchdog_outlives_program:
        return
    print("the watchdog is armed: resetting into the maintenance hold")
    try:
        with open(HOLD, "w") as f:
            f.write("ctrl-c")
    except OSError:
        pass
    board.reset()


def _safe_mode(board, reason):
    """Stop the app for safemode.retry_s(), then reset for another try. The reason stays in
    safemode.txt for the next healthy run to report. Ctrl-C gives the REPL."""
    from uplink import safemode

    log.error("safe-mode", reason)
    safemode.note(reason)
    wait = safemode.retry_s()
    del safemode
    print("SAFE MODE: the app is stopped; it tries again in %d s. Fix the cause above, or Ctrl-C for the REPL." % wait)
    wdt = board.armed_watchdog() if board is not None else None
    try:
        while wait > 0:  # a watchdog the app armed before failing is fed meanwhile
            if wdt is not None:
                wdt.feed()
            time.sleep(min(wait, 5))
            wait -= 5
    except KeyboardInterrupt:
        _interrupted(board)
        return
    _reset(board)
