# A stand-in for the ESP32 port's `network` module that scripts what the air does: which
# access points exist, their passwords, APs that vanish or boot late, links that drop.
#
#   import fake_network
#   fake_network.install()                    # sys.modules["network"] = fake_network
#   fake_network.reset()
#   fake_network.add_ap("home", "secret", rssi=-60)
#   fake_network.add_ap("shop", "pw", absent_for=3)  # boots late: the first 3 attempts miss it
#   fake_network.drop()                       # the current link goes down
#   fake_network.FLAP_MS = 50                 # every link drops 50 ms after it came up
#
# It follows micropython ports/esp32/network_wlan.c (v1.29 line) function by function:
# the state is the port's statics (wifi_sta_connect_requested, wifi_sta_connected,
# wifi_sta_disconn_reason, conf_wifi_sta_reconnects, wifi_sta_reconnects), status() checks
# them in the port's order, and driver events reach them through a copy of
# network_wlan_wifi_event_handler / network_wlan_ip_event_handler, delivered EVENT_MS after
# the driver posts them (the port runs them in the system-event task). What ESP-IDF itself
# does (closed source) is taken from its documentation and noted where used.
import sys
import time

STA_IF = 0
AP_IF = 1
# ports/esp32/modnetwork_globals.h; the reasons are ESP-IDF's wifi_err_reason_t
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_BEACON_TIMEOUT = 200
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202  # WIFI_REASON_AUTH_FAIL
STAT_ASSOC_FAIL = 203
STAT_CONNECT_FAIL = 203  # the port maps it to WIFI_REASON_ASSOC_FAIL too
STAT_HANDSHAKE_TIMEOUT = 204
REASON_ASSOC_LEAVE = 8
REASON_4WAY_HANDSHAKE_TIMEOUT = 15
REASON_CONNECTION_FAIL = 205
STAT_NO_AP_FOUND_W_COMPATIBLE_SECURITY = 210
STAT_NO_AP_FOUND_IN_AUTHMODE_THRESHOLD = 211
STAT_NO_AP_FOUND_IN_RSSI_THRESHOLD = 212

# Timings. Tests scale DELAY_MS and SCAN_MS down like they scale the firmware's own.
DELAY_MS = 30  # one association attempt until its outcome (~1-3 s on a board)
EVENT_MS = 2  # driver event -> handler (the system-event task runs within a few ms)
# network_wlan_scan() calls esp_wifi_scan_start(&config, block=1) with scan_time all 0, so
# ESP-IDF's defaults apply (esp_wifi_scan_start docs: active scan, max 120 ms per channel)
# over the country's channels (1-13): the caller, and so the asyncio loop, is blocked that
# long. reset() restores this modelled value.
SCAN_MS_ESP32 = 13 * 120
SCAN_MS = SCAN_MS_ESP32
FLAP_MS = None  # when set, every link drops this long after it came up (a flapping AP)
APS = {}  # ssid -> dict(password, rssi, mode, absent_for): mode "ok" | "hang" | "fail" | "wpa2"
LOG = []  # ("connect", ssid) / ("disconnect",) / ("scan",): what the firmware did
_wlans = {}


def install():
    sys.modules["network"] = sys.modules[__name__]


def reset():
    global FLAP_MS, SCAN_MS
    FLAP_MS = None
    SCAN_MS = SCAN_MS_ESP32
    APS.clear()
    del LOG[:]
    _wlans.clear()


def add_ap(ssid, password="", rssi=-60, mode="ok", absent_for=0, hidden=False):
    # mode "wpa2": a wrong password is reported the way ESP-IDF usually reports a bad WPA2
    # passphrase, 4-way handshake timeout (15) then CONNECTION_FAIL (205), which status()
    # shows as 202 (micropython issue #11625). absent_for: the AP is still booting for that
    # many association attempts (and invisible to scans meanwhile). hidden: joinable, but
    # not in scans.
    APS[ssid] = {"password": password, "rssi": rssi, "mode": mode, "absent_for": absent_for,
                 "hidden": hidden}


def remove_ap(ssid):
    # The AP is switched off: a link to it drops, scans and connects no longer find it.
    APS.pop(ssid, None)
    for w in _wlans.values():
        if w._link and w._ssid == ssid:
            w._link_lost(STAT_BEACON_TIMEOUT)


def drop():
    # The current link goes down (interference, AP reboot) while the AP stays known.
    for w in _wlans.values():
        if w._link:
            w._link_lost(STAT_BEACON_TIMEOUT)


def connects():
    return [e[1] for e in LOG if e[0] == "connect"]


def _on_air(ap):
    return ap is not None and ap["absent_for"] <= 0


class WLAN:
    def __new__(cls, interface=STA_IF):
        # network_wlan_make_new: one static object per interface.
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
        self._requested = False  # wifi_sta_connect_requested
        self._connected = False  # wifi_sta_connected (set on GOT_IP)
        self._reason = 0  # wifi_sta_disconn_reason: cleared on GOT_IP only
        self._conf = 0  # conf_wifi_sta_reconnects: reconnects + 1; 0 = retry forever
        self._tries = 0  # wifi_sta_reconnects
        self._attempt = None  # ticks when the driver's current association attempt began
        self._wrong = 0  # attempts refused for the password since connect()
        self._link = False  # the driver's association (the port learns of it by events)
        self._events = []  # (due ticks, reason or None for GOT_IP): posted, not yet handled
        self._ssid = None
        self._key = None
        self._t0 = 0  # when the current link came up

    # -- the driver (ESP-IDF) ------------------------------------------------------------
    def _esp_wifi_connect(self):
        # ESP_ERR_WIFI_STATE while an attempt is under way (the port raises it from
        # connect(); the event handler only logs it)
        if self._attempt is not None:
            return False
        self._attempt = time.ticks_ms()
        return True

    def _post(self, reason):
        self._events.append((time.ticks_add(time.ticks_ms(), EVENT_MS), reason))

    def _link_lost(self, reason):
        # the driver loses the association; the port hears of it from the event, later
        self._link = False
        self._t0 = None
        self._post(reason)

    def _settle(self):
        now = time.ticks_ms()
        if self._link and FLAP_MS is not None:
            if time.ticks_diff(now, self._t0) >= FLAP_MS:
                self._link_lost(STAT_BEACON_TIMEOUT)
        a = self._attempt
        if a is not None and time.ticks_diff(now, a) >= DELAY_MS:
            ap = APS.get(self._ssid)
            if ap is not None and ap["absent_for"] > 0:
                ap["absent_for"] -= 1
                ap = None
            if ap is None:
                self._attempt = None
                self._post(STAT_NO_AP_FOUND)
            elif ap["mode"] == "hang":
                pass
            elif ap["mode"] == "fail":
                self._attempt = None
                self._post(STAT_ASSOC_FAIL)
            elif ap["password"] != (self._key or ""):
                self._attempt = None
                self._wrong += 1
                if ap["mode"] == "wpa2":
                    # the AP never completes the handshake; on the retry the driver gives
                    # up at once (micropython issue #11625's log: reason 15, then 205)
                    self._post(REASON_4WAY_HANDSHAKE_TIMEOUT if self._wrong == 1
                               else REASON_CONNECTION_FAIL)
                else:
                    self._post(STAT_WRONG_PASSWORD)
            else:
                self._attempt = None
                self._link = True
                self._t0 = now
                self._post(None)  # IP_EVENT_STA_GOT_IP (DHCP folded into the attempt)
        # the system-event task: handlers run in posting order once due
        while self._events and time.ticks_diff(now, self._events[0][0]) >= 0:
            reason = self._events.pop(0)[1]
            if reason is None:
                self._ip_event_got_ip()
            else:
                self._wifi_event_sta_disconnected(reason)

    # -- the port's event handlers (network_wlan.c) --------------------------------------
    def _ip_event_got_ip(self):
        # network_wlan_ip_event_handler, IP_EVENT_STA_GOT_IP
        self._connected = True
        self._reason = 0

    def _wifi_event_sta_disconnected(self, reason):
        # network_wlan_wifi_event_handler, WIFI_EVENT_STA_DISCONNECTED
        self._reason = reason
        self._connected = False
        if self._requested and self._active:
            if self._conf:
                self._tries += 1
                if self._tries >= self._conf:
                    return
            self._esp_wifi_connect()

    # -- the port's methods ---------------------------------------------------------------
    def active(self, on=None):
        # network_wlan_active; WIFI_EVENT_STA_START resets wifi_sta_reconnects. esp_wifi_stop
        # on a connected station posts STA_DISCONNECTED(ASSOC_LEAVE) (ESP-IDF Wi-Fi guide)
        if on is None:
            return self._active
        on = bool(on)
        if on and not self._active:
            self._tries = 0
        if not on and self._active:
            self._attempt = None
            if self._link:
                self._link_lost(REASON_ASSOC_LEAVE)
            self._settle_now()
        self._active = on

    def _settle_now(self):
        # a blocking call waits for the handlers (active() polls until the state changed)
        for i in range(len(self._events)):
            self._events[i] = (time.ticks_ms(), self._events[i][1])
        self._settle()

    def connect(self, ssid=None, key=None, **kw):
        # network_wlan_connect: sets the config, resets wifi_sta_reconnects (not the
        # disconnect reason), esp_wifi_connect(), then wifi_sta_connect_requested = True
        if not self._active:
            raise OSError("Wifi Not Started")
        self._settle()
        LOG.append(("connect", ssid))
        if ssid is not None:
            self._ssid, self._key = ssid, key
        self._tries = 0
        self._wrong = 0
        if not self._esp_wifi_connect():
            raise OSError("Wifi Internal State Error")
        self._requested = True

    def disconnect(self):
        # network_wlan_disconnect: wifi_sta_connect_requested = False; esp_wifi_disconnect().
        # An attempt under way is abandoned. STA_DISCONNECTED(ASSOC_LEAVE) is posted only when
        # the station was connected (ESP-IDF Wi-Fi guide, WIFI_EVENT_STA_DISCONNECTED), so
        # after a failed attempt the old reason stays.
        self._settle()
        LOG.append(("disconnect",))
        self._requested = False
        self._attempt = None
        if self._link:
            self._link_lost(REASON_ASSOC_LEAVE)

    @property
    def _status(self):
        # network_wlan_status, no argument, STA: the checks in the port's order. A failure
        # reason is reported before "connecting", and the reason is cleared only by GOT_IP:
        # right after connect() status() still shows the previous attempt's failure.
        r = self._reason
        if self._connected:
            return STAT_GOT_IP
        if r in (STAT_NO_AP_FOUND, STAT_NO_AP_FOUND_IN_RSSI_THRESHOLD,
                 STAT_NO_AP_FOUND_IN_AUTHMODE_THRESHOLD, STAT_NO_AP_FOUND_W_COMPATIBLE_SECURITY):
            return r
        if r in (STAT_WRONG_PASSWORD, REASON_CONNECTION_FAIL):
            return STAT_WRONG_PASSWORD
        if r == REASON_ASSOC_LEAVE:
            return STAT_IDLE
        if self._requested and (self._conf == 0 or self._tries < self._conf):
            return STAT_CONNECTING
        if r == 0:
            return STAT_IDLE
        return r

    def status(self, param=None):
        self._settle()
        if param == "rssi":
            if not self._link:  # esp_wifi_sta_get_ap_info fails
                raise OSError("Wifi Not Connected")
            return APS[self._ssid]["rssi"]
        if param is not None:
            raise ValueError("unknown status param")
        return self._status

    def isconnected(self):
        # network_wlan_isconnected: wifi_sta_connected, i.e. GOT_IP seen and no disconnect
        self._settle()
        return self._connected

    def scan(self):
        # network_wlan_scan: "STA must be active"; a blocking esp_wifi_scan_start whose
        # failure (ESP_ERR_WIFI_STATE while an attempt is under way) is ignored: [].
        if not self._active:
            raise OSError("STA must be active")
        self._settle()
        LOG.append(("scan",))
        if self._attempt is not None:
            return []
        time.sleep_ms(SCAN_MS)
        # (ssid, bssid, channel, RSSI, security, hidden=False always), strongest first
        out = [(s.encode(), b"\x00" * 6, 1, a["rssi"], 3, False)
               for s, a in APS.items() if _on_air(a) and not a.get("hidden")]
        out.sort(key=lambda t: -t[3])
        return out

    def ifconfig(self, *args):
        if self.isconnected():
            return ("192.168.1.50", "255.255.255.0", "192.168.1.1", "192.168.1.1")
        return ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")

    def config(self, *args, **kw):
        # network_wlan_config
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
