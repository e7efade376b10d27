# The hardware seam. Everything that touches ESP32 hardware goes through a Board, so the rest
# of the firmware runs unchanged on the unix port ("host board") and in tests.
#
# Two backends:
#   esp32  network.WLAN, machine.RTC/WDT/Pin/reset, esp32 temperature sensor
#   host   the unix port on a PC: Wi-Fi always up, OS clock plus an offset, a watchdog that
#          behaves like the ESP32's, reset() exits with RESET_EXIT so a supervisor restarts it
# ESP32-only modules are imported inside the esp32 backend only: the host never needs them.
import gc
import sys
import time

# Mirrors boards/*.json (the board cannot read those files at runtime; a host test keeps the
# two in step): id -> (backend, led_pin, led_active_low, has_chip_temperature)
PROFILES = {
    "esp32-devkitc": ("esp32", 2, False, True),
    "esp32-s3": ("esp32", 48, False, True),
    "esp32-c3": ("esp32", 8, False, True),
    "host": ("host", None, False, False),
}

# The IDF heap block a TLS handshake needs: mbedTLS's 16 KB in-buffer and its record headers
# (the port's CONFIG_MBEDTLS_ASYMMETRIC_CONTENT_LEN; the 4 KB out-buffer and the rest fit smaller blocks).
HANDSHAKE_BYTES = 17 * 1024
RESET_EXIT = 75  # host board: exit code that means "restart me" (EX_TEMPFAIL)
# Written just before every reset the firmware makes (Board.reset), consumed at the next boot by
# uplink.safemode: the ESP32 reports machine.reset() and a panic alike as HARD_RESET
# (ports/esp32/modmachine.c), so a HARD reset without it is a crash. Deploy's reset writes it too
# (host_tools/board_link.py RESET_MARK).
RESET_MARK = "reset.mark"
# device.board when config.json does not say: the board the firmware runs on. "esp32" is no
# profile, so it gets the esp32 backend without LED or temperature sensor (any ESP32 chip).
DEFAULT = "esp32" if sys.platform == "esp32" else "host"
ID_FILE = "board_id"  # host board: the unique id, in the state directory (the cwd)
_wdt = []  # the ESP32's one watchdog [machine.WDT, timeout ms], whichever Board armed it

# Seconds from 1970 to the port's epoch: 0 on the unix port (MICROPY_EPOCH_IS_1970 in
# ports/unix/mpconfigport.h), 946684800 on the ESP32, which never sets it and so counts
# time.time(), time_ns(), gmtime() and mktime() from 2000 (py/mpconfig.h default; its
# mp_hal_time_ns in ports/esp32/mphalport.c is gettimeofday, set by RTC.datetime in 2000
# seconds). Every epoch the firmware handles is unix; this is the one place that converts.
EPOCH_OFFSET = 946684800 - time.mktime((2000, 1, 1, 0, 0, 0, 0, 0))


def load(name):
    """The Board for a config's device.board. An id not in PROFILES gets the backend of the
    port we run on, with no LED and no temperature sensor."""
    p = PROFILES.get(name)
    if p is None:
        p = ("esp32" if sys.platform == "esp32" else "host", None, False, False)
    if p[0] == "esp32":
        return Esp32Board(name, p[1], p[2], p[3])
    # The host backend lives in its own module: an ESP32 never spends heap on it.
    from uplink.board_host import HostBoard

    return HostBoard(name, p[1], p[2], p[3])


def os_ms():
    """Unix epoch milliseconds from the port's clock (the RTC on an ESP32, the PC's on the
    host). Integers only: an ESP32 float is single precision, which cannot hold an epoch to
    the second."""
    return time.time_ns() // 1000000 + EPOCH_OFFSET * 1000


def gmtime(epoch_s):
    """time.gmtime() of a unix epoch second, on a port of either epoch."""
    return time.gmtime(epoch_s - EPOCH_OFFSET)


class Board:
    backend = ""
    watchdog_outlives_program = False  # True: still armed when the program returns to the REPL

    def __init__(self, name, led_pin=None, led_active_low=False, has_temperature=False):
        self.name = name
        self.led_pin = led_pin
        self.led_active_low = led_active_low
        self.has_temperature = has_temperature
        self._wlan = None
        self._led = None

    def armed_watchdog(self):
        """The watchdog if this program armed it (the app, or main.py for a trial), else None."""
        return _wdt[0] if _wdt else None

    # The app's way out (App.main sets it to the outbox's flush): readings held in RAM.
    on_leave = None

    def leave(self):
        """Every way out of the app (a reset, Ctrl-C, a crash) passes here first, so readings
        the outbox holds in RAM (outbox.hold_ms) reach flash. Once: a failure here is no
        reason not to reset."""
        f, self.on_leave = self.on_leave, None
        if f is not None:
            try:
                f()
            except Exception as e:  # a full flash: the reset matters more now
                print("held readings not written: %r" % (e,))

    def mark_reset(self):
        """Say that the coming reset is the firmware's own, not a crash (RESET_MARK). A mark that
        cannot be written (a full flash) makes the next boot count one crash too many."""
        try:
            open(RESET_MARK, "w").close()
        except OSError:
            pass

    def memory(self):
        """Health keys: gc_free (the GC heap's free bytes, and the largest IDF block it could
        grow into); where there is an IDF heap (an ESP32, or the ESP32 model's -X chip), its
        idf_free and idf_largest: mbedTLS, Wi-Fi and lwIP allocate from it, and the GC heap
        grows into it (ports/esp32: MICROPY_GC_SPLIT_HEAP_AUTO). A TLS handshake needs a block
        of HANDSHAKE_BYTES."""
        m = {"gc_free": gc.mem_free()}
        try:
            import esp32
        except ImportError:  # the PyPI unix port
            return m
        heaps = esp32.idf_heap_info(esp32.HEAP_DATA)
        if heaps:  # (the model without -X chip has none)
            m["idf_free"] = sum(r[1] for r in heaps)
            m["idf_largest"] = max(r[2] for r in heaps)
        return m

    def __repr__(self):
        return "<Board %s (%s)>" % (self.name, self.backend)


class Esp32Board(Board):
    backend = "esp32"
    # The task watchdog lives in the IDF, below MicroPython: machine.WDT has no deinit
    # (ports/esp32/machine_wdt.c) and a soft reset leaves it armed (ports/esp32/main.c,
    # soft_reset_exit). It outlives the program: a Ctrl-C must reset into the hold.
    watchdog_outlives_program = True

    def wlan(self):
        if self._wlan is None:
            import network

            self._wlan = network.WLAN(network.STA_IF)
        return self._wlan

    def unique_id(self):
        import binascii

        import machine

        return binascii.hexlify(machine.unique_id()).decode()

    def reset(self):
        import machine

        self.leave()
        self.mark_reset()
        machine.reset()

    def watchdog(self, ms):
        # One per chip, never stopped (ports/esp32/machine_wdt.c): WDT() again only sets a new
        # timeout (esp_task_wdt_reconfigure). Module state: main.py arms a trial's before the
        # app's Board exists, and the app's supervisor shortens it.
        if not _wdt or _wdt[1] != ms:
            import machine

            _wdt[:] = [machine.WDT(timeout=ms), ms]
        return _wdt[0]

    def led(self, on):
        if self.led_pin is None:
            return
        if self._led is None:  # made once: the LED blinks often, allocations add up
            from machine import Pin

            self._led = Pin(self.led_pin, Pin.OUT)
        self._led.value(bool(on) != self.led_active_low)

    def chip_temperature(self):
        if not self.has_temperature:
            return None
        import esp32

        try:
            # S2/S3/C3/C6 have mcu_temperature() in Celsius; the original ESP32 only the
            # raw reading, which is in Fahrenheit.
            f = getattr(esp32, "mcu_temperature", None)
            if f is not None:
                return float(f())
            return (esp32.raw_temperature() - 32) / 1.8
        except Exception:
            return None

    def set_rtc(self, epoch_s, ms=0):
        import machine

        t = gmtime(int(epoch_s))
        # RTC.datetime: (year, month, day, weekday, hours, minutes, seconds, microseconds)
        machine.RTC().datetime((t[0], t[1], t[2], t[6], t[3], t[4], t[5], ms * 1000))

    def time_ms(self):
        return os_ms()

    def reset_cause(self):
        # ports/esp32/modmachine.c, mp_machine_reset_cause: brownout is reported as PWRON,
        # machine.reset() (ESP_RST_SW) and panics as HARD, the task watchdog as WDT.
        import machine

        c = machine.reset_cause()
        for name in ("PWRON", "HARD", "WDT", "DEEPSLEEP", "SOFT"):
            if c == getattr(machine, name + "_RESET", -1):
                return {"PWRON": "power_on", "WDT": "watchdog"}.get(name, name.lower())
        return "unknown"
