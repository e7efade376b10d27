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
        if w._ssid == ssid and w._status == STAT_GOT_IP:
            w._status = STAT_BEACON_TIMEOUT


def drop():
    # The current link goes down (interference, AP reboot) while the AP stays known.
    for w in _wlans.values():
        if w._status == STAT_GOT_IP:
            w._status = STAT_BEACON_TIMEOUT


def connects():
    return [e[1] for e in LOG if e[0] == "connect"]


class WLAN:
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
        self._status = STAT_IDLE
        self._ssid = None
        self._key = None
        self._t0 = 0

    def active(self, on=None):
        if on is None:
            return self._active
        self._active = bool(on)
        if not on:
            self._status = STAT_IDLE

    def connect(self, ssid=None, key=None, **kw):
        if not self._active:
            raise OSError("Wifi Not Started")
        if self._status == STAT_CONNECTING:
            raise OSError("Wifi Internal State Error")
        LOG.append(("connect", ssid))
        self._ssid, self._key = ssid, key
        self._status = STAT_CONNECTING
        self._t0 = time.ticks_ms()

    def disconnect(self):
        LOG.append(("disconnect",))
        self._status = STAT_IDLE

    def _settle(self):
        if self._status == STAT_GOT_IP and FLAP_MS is not None:
            if time.ticks_diff(time.ticks_ms(), self._t0) >= FLAP_MS:
                self._status = STAT_BEACON_TIMEOUT
        if self._status != STAT_CONNECTING:
            return
        if time.ticks_diff(time.ticks_ms(), self._t0) < DELAY_MS:
            return
        ap = APS.get(self._ssid)
        if ap is None:
            self._status = STAT_NO_AP_FOUND
        elif ap["mode"] == "hang":
            return
        elif ap["mode"] == "fail":
            self._status = STAT_CONNECT_FAIL
        elif ap["password"] != (self._key or ""):
            self._status = STAT_WRONG_PASSWORD
        else:
            self._status = STAT_GOT_IP
            self._t0 = time.ticks_ms()  # up since

    def status(self, param=None):
        self._settle()
        if param == "rssi":
            if self._status != STAT_GOT_IP:
                raise OSError("not connected")
            return APS[self._ssid]["rssi"]
        if param is not None:
            raise ValueError("unknown status param")
        return self._status

    def isconnected(self):
        self._settle()
        return self._status == STAT_GOT_IP

    def scan(self):
        if not self._active:
            raise OSError("Wifi Not Started")
        LOG.append(("scan",))
        # (ssid, bssid, channel, RSSI, security, hidden), strongest first like the ESP32
        out = [(s.encode(), b"\x00" * 6, 1, a["rssi"], 3, False) for s, a in APS.items()]
        out.sort(key=lambda t: -t[3])
        return out

    def ifconfig(self, *args):
        if self.isconnected():
            return ("192.168.1.50", "255.255.255.0", "192.168.1.1", "192.168.1.1")
        return ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")

    def config(self, *args, **kw):
        if args == ("ssid",):
            return self._ssid or ""
        if args == ("mac",):
            return b"\x24\x0a\xc4\x00\x00\x01"
        if args == ("hostname",):
            return "esp32"
        if args:
            raise ValueError("unknown config param")
        return None
