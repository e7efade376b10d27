# Readings: the user's (user.read, user.read_devices) and the board's health, marked with the
# time (uplink.boots) and put in the outbox every telemetry interval, or at once when woken.
import asyncio
import gc
import json

from uplink import log
from uplink.board import HANDSHAKE_BYTES


class Telemetry:
    def __init__(self, app):
        self.app = app
        t = app.cfg["telemetry"]
        self.interval_s = t["interval_ms"] / 1000 if t["interval_ms"] else t["interval_s"]
        self.wake = asyncio.Event()  # set: the next reading now (set_interval, a command)
        self.idf_warned = False
        self.reads = 0  # read() calls that returned (an update's trial needs one: App.unhealthy)

    def health(self):
        app = self.app
        gc.collect()
        h = {
            "uptime_s": log.uptime_s(),  # since boot, right across the ticks wrap
            "outbox_depth": app.outbox.depth if app.outbox else 0,
            "dropped": app.outbox.dropped if app.outbox else 0,
            "fw_version": app.ctx.fw()[1],  # the OTA bundle's (uplink.ota.running)
        }
        h.update(app.board.memory())  # gc_free; on the ESP32 also idf_free, idf_largest
        lg = h.get("idf_largest")
        if lg is not None and lg < HANDSHAKE_BYTES and not self.idf_warned:  # once: the next TLS
            self.idf_warned = True  # handshake fails (ENOMEM, or mbedTLS's "not correctly signed")
            log.warn("memory", "IDF heap: largest free block %d bytes, a TLS handshake needs %d (docs/hardware.md)"
                     % (lg, HANDSHAKE_BYTES))
        rssi = app.wifi.rssi() if app.wifi else None
        if rssi is not None:
            h["rssi"] = rssi
        t = app.board.chip_temperature()
        if t is not None:
            h["chip_temp"] = t
        if app.auth_failures:
            h["auth_failures"] = app.auth_failures
        n = app.adapter.too_old if app.adapter else 0
        if n:
            h["too_old"] = n  # readings older than the cloud accepts: not sent
        if app.publisher is not None and app.publisher.set_aside:
            h["set_aside"] = app.publisher.set_aside  # readings the cloud refused (outbox aside)
        if app.safe_mode_reason:  # the first run after safe mode says why it was there
            h["safe_mode"] = app.safe_mode_reason
        if app.sessions:
            h["platforms"] = app.sessions.health()
        return h

    def take_reading(self):
        app = self.app
        values = {}
        health = app.cfg["telemetry"]["health"]
        if health is None:  # not set: where the platforms have room for the keys (platforms.Base.HEALTH)
            health = app.adapter.HEALTH and (not app.sessions or app.sessions.all_health())
        if health and (app.adapter is None or app.adapter.health_due()):
            values.update(self.health())
        try:
            mine = dict(app.user.read() or {})  # a copy: what is dropped below stays in user.py's
            drop_unencodable(mine)
            self.reads += 1
        except Exception as e:  # a broken sensor must not stop health telemetry
            log.user_exc("user", "read() failed", e)
            mine = {}
        log.read(mine)  # the user's values on the console, apart from the health keys
        values.update(mine)
        # the time now, or (clock not known yet) this boot and its uptime: uplink.boots
        now = app.clock.now_ms() if app.clock else None
        if app.boots is None:
            return {"values": values, "ts": now}
        return app.boots.mark({"values": values}, now)

    def stamp(self, reading, final=False):
        """For the publisher: a stored reading's time, once it can be known (uplink.boots)."""
        app = self.app
        if app.boots is None:
            return True
        return app.boots.stamp(reading, app.clock.now_ms() if app.clock else None, final)

    def store(self, reading):
        app = self.app
        try:
            app.outbox.put(json.dumps(reading).encode())
        except (ValueError, OSError) as e:  # too big for a record, or the flash failed
            log.error("outbox", "reading not stored: %s" % e)
            return
        app.publisher.notify()
        if app.sessions:
            app.sessions.notify()

    async def run(self):
        app = self.app
        # sub-device readings only where the platform runs a gateway session (adapter.gateway)
        devices = None
        if hasattr(app.user, "read_devices") and app.adapter.gateway:
            from uplink import devices
        if not app.adapter.publishes and not (app.sessions and app.sessions.cursors):
            self.reads = -1  # a watcher (Weightron without publish = true) reads nothing, so a trial needs none
            return
        while True:
            try:
                reading = self.take_reading()
                self.store(reading)
                if devices is not None:
                    devices.store(self, reading)
            except Exception as e:
                # a MemoryError while taking or storing a reading: lose this reading, not
                # every later one (this task ending would stop all telemetry)
                log.exc("telemetry", "reading skipped", e)
                gc.collect()
            self.wake.clear()
            try:  # (a MemoryError here ends this run of the task: App.keep starts it again)
                await asyncio.wait_for(self.wake.wait(), self.interval_s)
            except asyncio.TimeoutError:
                pass


def drop_unencodable(values):
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
