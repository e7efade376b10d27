# A stand-in for the ESP32 port's `network` module that scripts what the air does: which
# access points exist, their passwords, APs that vanish, links that drop and come back.
#
#   import fake_network
#   fake_network.install()                    # sys.modules["network"] = fake_network
#   fake_network.reset()
#   fake_network.add_ap("home", "secret", rssi=-60)
#   fake_network.drop()                       # the current link goes down
#   fake_network.FLAP_MS = 50                 # every link drops 50 ms after it came up
#
# Like the ESP32: connect() needs active(True); connect() while a connect is under way
# raises OSError (call disconnect() first); the outcome arrives a little later.
import sys
import time

STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_BEACON_TIMEOUT = 200
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202
STAT_ASSOC_FAIL = 203
STAT_CONNECT_FAIL = 203
STAT_HANDSHAKE_TIMEOUT = 204

DELAY_MS = 30  # how long an association takes
FLAP_MS = None  # when set, every link drops this long after it came up (a flapping AP)
APS = {}  # ssid -> dict(password, rssi, mode): mode "ok" | "hang" | "fail"
LOG = []  # ("connect", ssid) / ("disconnect",) / ("scan",): what the firmware did
_wlans = {}


def install():
    sys.modules["network"] = sys.modules[__name__]


def reset():
    global FLAP_MS
    FLAP_MS = None
    APS.clear()
    del LOG[:]
    _wlans.clear()


def add_ap(ssid, password="", rssi=-60, mode="ok"):
    APS[ssid] = {"password": password, "rssi": rssi, "mode": mode}


def remove_ap(ssid):
    # The AP is switched off: a link to it drops, scans and connects no longer find it.
    APS.pop(ssid, None)
    for w in _wlans.values():
        if w._connected and w._ssid == ssid:
            w._disconnected(STAT_BEACON_TIMEOUT)


def drop():
    # The current link goes down (interference, AP reboot) while the AP stays known.
    for w in _wlans.values():
        if w._connected:
            w._disconnected(STAT_BEACON_TIMEOUT)


def connects():
    return [e[1] for e in LOG if e[0] == "connect"]


class WLAN:
    # Mirrors ports/esp32/network_wlan.c: after a failed association the driver retries by
    # itself, and status() says STAT_CONNECTING until config(reconnects=n) retries are
    # used up (by default, never); only then does it return the reason (202, 201, ...).
    # The retry counter is reset by connect() only, not by a successful association.

    def __new__(cls, interface=STA_IF):
        # The ESP32 hands out one object per interface.
        w = _wlans.get(interface)
        if w is None:
            w = object.__new__(cls)
            w._init()
            _wlans[interface] = w
        return w

    def __init__(self, interface=STA_IF):
        pass

    def _init(self):
        self._active = False
        self._requested = False  # connect() called and no disconnect() since
        self._connected = False
        self._pending = False  # an association attempt under way
        self._reason = 0  # last disconnect reason
        self._conf = 0  # reconnects + 1; 0 = retry forever (the port's default)
        self._tries = 0
        self._ssid = None
        self._key = None
        self._t0 = 0

    def active(self, on=None):
        if on is None:
            return self._active
        self._active = bool(on)
        if not on:
            self._requested = self._connected = self._pending = False

    def connect(self, ssid=None, key=None, **kw):
        if not self._active:
            raise OSError("Wifi Not Started")
        if self._pending:
            raise OSError("Wifi Internal State Error")
        LOG.append(("connect", ssid))
        self._ssid, self._key = ssid, key
        self._tries = 0
        self._requested = True
        self._start()

    def disconnect(self):
        LOG.append(("disconnect",))
        self._requested = False
        if self._connected or self._pending:
            self._connected = self._pending = False
            self._reason = 8  # WIFI_REASON_ASSOC_LEAVE

    def _start(self):
        self._pending = True
        self._t0 = time.ticks_ms()

    def _disconnected(self, reason):
        # the port's STA_DISCONNECTED event handler
        self._reason = reason
        self._connected = self._pending = False
        if self._requested:
            if self._conf:
                self._tries += 1
                if self._tries >= self._conf:
                    return
            self._start()

    def _settle(self):
        now = time.ticks_ms()
        if self._connected and FLAP_MS is not None and time.ticks_diff(now, self._t0) >= FLAP_MS:
            self._disconnected(STAT_BEACON_TIMEOUT)
        if not self._pending or time.ticks_diff(now, self._t0) < DELAY_MS:
            return
        ap = APS.get(self._ssid)
        if ap is None:
            self._disconnected(STAT_NO_AP_FOUND)
        elif ap["mode"] == "hang":
            return
        elif ap["mode"] == "fail":
            self._disconnected(STAT_CONNECT_FAIL)
        elif ap["password"] != (self._key or ""):
            self._disconnected(STAT_WRONG_PASSWORD)
        else:
            self._pending = False
            self._connected = True
            self._reason = 0
            self._t0 = now  # up since

    @property
    def _status(self):
        if self._connected:
            return STAT_GOT_IP
        if self._requested and (self._conf == 0 or self._tries < self._conf):
            return STAT_CONNECTING
        return self._reason or STAT_IDLE

    def status(self, param=None):
        self._settle()
        if param == "rssi":
            if not self._connected:
                raise OSError("not connected")
            return APS[self._ssid]["rssi"]
        if param is not None:
            raise ValueError("unknown status param")
        return self._status

    def isconnected(self):
        self._settle()
        return self._connected

    def scan(self):
        if not self._active:
            raise OSError("STA must be active")
        LOG.append(("scan",))
        if self._pending:
            return []  # the port ignores a failed scan start: "STA is connecting"
        # (ssid, bssid, channel, RSSI, security, hidden), strongest first like the ESP32
        out = [(s.encode(), b"\x00" * 6, 1, a["rssi"], 3, False) for s, a in APS.items()]
        out.sort(key=lambda t: -t[3])
        return out

    def ifconfig(self, *args):
        if self.isconnected():
            return ("192.168.1.50", "255.255.255.0", "192.168.1.1", "192.168.1.1")
        return ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")

    def config(self, *args, **kw):
        if kw:
            if args:
                raise TypeError("either pos or kw args are allowed")
            for k, v in kw.items():
                if k == "reconnects":
                    self._conf = 0 if v == -1 else v + 1
                elif k not in ("pm", "txpower", "dhcp_hostname", "hostname"):
                    raise ValueError("unknown config param")
            return None
        if args == ("ssid",):
            return self._ssid or ""
        if args == ("mac",):
            return b"\x24\x0a\xc4\x00\x00\x01"
        if args == ("hostname",):
            return "esp32"
        if args == ("reconnects",):
            return self._conf - 1
        raise ValueError("unknown config param")
