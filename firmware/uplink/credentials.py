# Where the MQTT username/password (or an HTTP Bearer token) come from, asked before every
# connect. Sources (config.json `platform.credentials`, docs/config.md):
#   static: username/password from the config, as they are;
#   relay:  the token relay (`uplink relay` on the LAN) hands out short-lived platform tokens.
#           The request is signed with this device's own key (HMAC-SHA256 over method, path,
#           device, time and a random nonce), so neither a client secret nor a replayable
#           request ever lives on the board. A cached answer is reused while it has more than
#           min_life_s left; its lifetime (expires_in) is counted on this board's clock from
#           the moment it arrived, so the board's and the relay's clocks need not agree on the
#           expiry. (Not on ticks_ms: those wrap after 12 days on the ESP32, and a connection
#           can well outlive that before the next reconnect looks at the cache.)
# Secrets never reach a log line: only the relay URL, the HTTP status and the lifetime do.
import asyncio
import binascii
import hashlib
import json
import os

from uplink import board, https, log

PATH = "/v1/credentials"


class CredentialsError(OSError):
    # an OSError so a reconnect loop treats it like any other failed connect attempt
    pass


def _xor(key, pad):
    return bytes(b ^ pad for b in key)


class HMAC:
    """HMAC-SHA256 with a fixed key (MicroPython has no hmac module); pads prepared once."""

    def __init__(self, key):
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        key = key + bytes(64 - len(key))
        self._i = _xor(key, 0x36)
        self._o = _xor(key, 0x5C)

    def hexdigest(self, msg):
        h = hashlib.sha256(self._i)
        h.update(msg)
        inner = h.digest()
        h = hashlib.sha256(self._o)
        h.update(inner)
        return binascii.hexlify(h.digest()).decode()


class Credentials:
    """await creds() -> (username, password). creds.invalidate() after a refusal."""

    def __init__(self, cfg, fallback=(None, None), now_ms=None, timeout_ms=10000):
        self.source = cfg.get("source") or "static" if cfg else "static"
        self._fallback = fallback
        self._now_ms = now_ms
        self._timeout_ms = timeout_ms
        self.min_life_s = 60
        self._user = self._pw = None
        self._exp_s = 0  # board-clock seconds when the cached token expires
        self.on_ota = None  # called with the relay's update offer {version, size, sha256}, if any
        self._fresh = False
        self.fetches = 0  # relay requests made (for tests and status)
        self._lock = asyncio.Lock()
        if self.source == "static":
            c = cfg or {}
            self._user = c.get("username") or fallback[0]
            self._pw = c.get("password") if c.get("password") is not None else fallback[1]
            return
        if self.source != "relay":
            raise ValueError("platform.credentials.source: expected 'static' or 'relay', got %r"
                             % self.source)
        for k in ("url", "ca", "device_id", "key"):
            if not cfg.get(k):
                raise ValueError("platform.credentials.%s: missing (required for source relay)" % k)
        url = cfg["url"]
        if not url.startswith("https://"):
            # the answer is a live token: never over plain HTTP
            raise ValueError("platform.credentials.url: expected an https:// URL, got %s" % url)
        self.url = url.rstrip("/") + PATH
        self.ca = cfg.get("ca")
        self.device = cfg["device_id"]
        self.min_life_s = cfg.get("min_life_s") or 60
        self.kid = cfg.get("key_id")  # signed too: the relay picks this key after a rotation
        try:
            self._mac = HMAC(binascii.unhexlify(cfg["key"]))
        except ValueError:
            raise ValueError("platform.credentials.key: expected hex digits")

    def remaining_s(self):
        """Seconds the cached token has left (0 when none)."""
        if self._pw is None or self.source == "static":
            return 0
        left = self._exp_s - self._now_s()
        return left if left > 0 else 0

    def invalidate(self):
        """The token was refused: drop it and ask the relay for a new one next time."""
        if self.source == "relay":
            self._pw = None
            self._fresh = True

    async def __call__(self):
        if self.source == "static":
            return self._user, self._pw
        if self._pw is None or self.remaining_s() <= self.min_life_s:
            # one request at a time: the MQTT reconnect and an HTTP post asking together
            # share the answer (and the heap holds one TLS session, not two)
            async with self._lock:
                if self._pw is None or self.remaining_s() <= self.min_life_s:
                    await self._fetch()
        return self._user, self._pw

    def _now_s(self):
        # Unix seconds, as the relay checks them: time.time() counts from 2000 on the ESP32
        # (see uplink.board.EPOCH_OFFSET) and would sign every request 30 years early.
        return int((self._now_ms() if self._now_ms else board.os_ms()) // 1000)

    def headers(self, path):
        ts = str(self._now_s())
        nonce = binascii.hexlify(os.urandom(12)).decode()
        msg = "GET\n%s\n%s\n%s\n%s" % (path, self.device, ts, nonce)
        h = {"X-Uplink-Device": self.device, "X-Uplink-Time": ts, "X-Uplink-Nonce": nonce}
        if self.kid:
            msg += "\n" + self.kid
            h["X-Uplink-Key-Id"] = self.kid
        h["X-Uplink-Signature"] = self._mac.hexdigest(msg.encode())
        return h

    async def _fetch(self):
        url = self.url + ("?fresh=1" if self._fresh else "")
        path = url[url.find("/", 8):]
        self.fetches += 1
        try:
            status, body = await https.request("GET", url, self.headers(path), ca=self.ca,
                                               timeout_ms=self._timeout_ms, max_body=6144)
        except (OSError, ValueError) as e:
            raise CredentialsError("token relay %s: %s" % (self.url, e))
        t0 = self._now_s()
        if status == 401:
            raise CredentialsError("token relay %s refused device %r (401): check the device key "
                                   "and that the board's clock is set" % (self.url, self.device))
        if status != 200:
            raise CredentialsError("token relay %s answered HTTP %d" % (self.url, status))
        try:
            d = json.loads(body)
            user, pw, life = d["username"], d["password"], int(d["expires_in"])
        except (ValueError, KeyError, TypeError):
            raise CredentialsError("token relay %s: answer is not the expected JSON" % self.url)
        ota = d.get("ota")  # an update `uplink ota` left for us (uplink.ota_relay)
        body = d = None
        self._user, self._pw, self._exp_s = user, pw, t0 + life
        self._fresh = False
        log.info("creds", "token from relay for %s, valid %ds" % (user, life))
        if ota and self.on_ota is not None:
            self.on_ota(ota)


def from_config(pcfg, now_ms=None):
    """The credentials callable for a platform config section (`platform` in config.json):
    its `credentials` when set, else the platform's own token/password as they are."""
    fallback = (pcfg.get("username"), pcfg.get("token") or pcfg.get("password"))
    return Credentials(pcfg.get("credentials"), fallback, now_ms)
