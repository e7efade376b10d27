# The host board backend (the MicroPython unix port on a PC): Wi-Fi is always up, the clock
# is the PC's plus an offset, there is no watchdog, and reset() exits with board.RESET_EXIT
# so a supervisor restarts the process. Loaded by board.load() only on the host.
import os
import sys

from uplink.board import ID_FILE, RESET_EXIT, Board, os_ms


class _NoWatchdog:
    def feed(self):
        pass


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
        sys.exit(RESET_EXIT)

    def watchdog(self, ms):
        if self._wdt is None:
            self._wdt = _NoWatchdog()
        return self._wdt

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
        # A supervisor that restarts us after RESET_EXIT can say so through the environment.
        return os.getenv("UPLINK_RESET_CAUSE") or "power_on"
