# The host board backend (the MicroPython unix port on a PC): Wi-Fi is always up, the clock
# is the PC's plus an offset, the watchdog behaves like the ESP32's, and reset() exits with
# board.RESET_EXIT so a supervisor restarts the process. The process is the chip: its start
# is a power-on. Loaded by board.load() only on the host.
import os
import sys
import time

from uplink.board import ID_FILE, RESET_EXIT, Board, os_ms

TYPE_CHECKING = False
if TYPE_CHECKING:  # for the type checker only
    from typing import Any

CAUSE_FILE = "reset_cause"  # state directory: why the process ended, for the next boot
_WDT_KEY = "_uplink_wdt"  # sys.modules slot: process state, like the IDF's, not the program's
_cause = []  # this process's reset cause: read at import (boot), before anything writes it


class _Watchdog:
    """machine.WDT as the ESP32 port has it (ports/esp32/machine_wdt.c): one per chip, no
    deinit, WDT(timeout=...) again only changes the timeout (esp_task_wdt_reconfigure). The
    IDF's task watchdog is not MicroPython state, so a soft reset (ports/esp32/main.c,
    soft_reset_exit) leaves it armed: here a thread that no Python reference keeps alive or can
    stop. Unfed for `ms`, it records "watchdog" as the next boot's reset cause and kills the
    process (SIGKILL, exit -9: host_tools.hostboard restarts on it as on RESET_EXIT)."""

    def __init__(self, ms):
        import _thread

        self.ms = ms
        self.deadline = time.ticks_add(time.ticks_ms(), ms)
        # made now: the thread must not allocate (the unix port's threads share the heap
        # without a lock)
        self._bite = "echo watchdog > '%s/%s'; kill -KILL $PPID" % (os.getcwd(), CAUSE_FILE)
        _thread.start_new_thread(self._run, ())

    def feed(self):
        self.deadline = time.ticks_add(time.ticks_ms(), self.ms)

    def _run(self):
        while time.ticks_diff(self.deadline, time.ticks_ms()) > 0:
            time.sleep_ms(20)
        os.system(self._bite)


class HostWLAN:
    """A network.WLAN station stand-in on the host: the PC is already online."""

    def __init__(self):
        self._active = True

    def active(self, on=None):
        if on is None:
            return self._active
        self._active = bool(on)

    def connect(self, ssid=None, key=None, **kw):
        pass

    def disconnect(self):
        pass

    def isconnected(self):
        return self._active

    def status(self, param=None):
        if param == "rssi":
            return -40
        return 1010 if self._active else 1000  # STAT_GOT_IP / STAT_IDLE

    def scan(self):
        return []

    def ifconfig(self, *args):
        return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")

    def config(self, *args, **kw):
        if args == ("ssid",):
            return "host"
        if args == ("mac",):
            return b"\x02\x00\x00\x00\x00\x01"
        return None


class HostBoard(Board):
    backend = "host"

    def __init__(self, *args):
        super().__init__(*args)
        self._offset_ms = 0
        self.led_on = False

    def wired(self):
        """The link as the app sees Wi-Fi's: the PC is online already (uplink.startup)."""
        return _Wired(self.wlan())

    def wlan(self):
        if self._wlan is None:
            self._wlan = HostWLAN()
        return self._wlan

    def unique_id(self):
        # Stable per state directory, so two host boards on one PC are two devices.
        try:
            with open(ID_FILE) as f:
                uid = f.read().strip()
            if uid:
                return uid
        except OSError:
            pass
        import binascii

        uid = binascii.hexlify(os.urandom(6)).decode()
        with open(ID_FILE, "w") as f:
            f.write(uid)
        return uid

    def reset(self):
        # machine.reset() is ESP_RST_SW, which machine.reset_cause() reports as HARD (a panic too)
        self.leave()
        self.mark_reset()
        _write_cause("hard")
        sys.exit(RESET_EXIT)

    def armed_watchdog(self):
        return sys.modules.get(_WDT_KEY)  # armed in this process (by main.py, on a trial)

    def watchdog(self, ms):
        w: Any = sys.modules.get(_WDT_KEY)
        if w is None:
            w = _Watchdog(ms)
            sys.modules[_WDT_KEY] = w
        else:
            w.ms = ms
            w.feed()
        return w

    def led(self, on):
        self.led_on = bool(on)

    def chip_temperature(self):
        return None

    def set_rtc(self, epoch_s, ms=0):
        # Never touch the PC's clock: keep the difference instead.
        self._offset_ms = int(epoch_s) * 1000 + ms - os_ms()

    def time_ms(self):
        return os_ms() + self._offset_ms

    def reset_cause(self):
        if not _cause:
            _take_cause()
        return _cause[0]


def _take_cause():
    # What the last process left in CAUSE_FILE ("hard" from reset(), "watchdog" from a bite);
    # nothing means the process was started or killed: a power-on.
    c = None
    try:
        with open(CAUSE_FILE) as f:
            c = f.read().strip()
        os.remove(CAUSE_FILE)
    except OSError:
        pass
    _cause[:] = [c or "power_on"]


def _write_cause(c):
    try:
        with open(CAUSE_FILE, "w") as f:
            f.write(c)
    except OSError:
        pass


_take_cause()


class _Wired:
    """The host board's link as the app sees Wi-Fi's: always up, no RSSI."""

    connected = True

    def __init__(self, wlan):
        self.ip = wlan.ifconfig()[0]

    def rssi(self):
        return None
