# Reads /config.json and checks it against a schema, so a mistake is reported once, at boot,
# with the key path and what was expected, instead of surfacing later as a confusing failure.
import json
import sys

from uplink import ConfigError  # noqa: F401 (one class, even when this module is imported again)

TYPE_CHECKING = False
if TYPE_CHECKING:  # for the type checker only: MicroPython ignores annotations
    from typing import NoReturn

REQUIRED = object()
PATH = "config.json"




def _positive(v):
    return v > 0 or "a number above 0"


def _not_negative(v):
    return v >= 0 or "0 or more"


# telemetry.interval_ms floor. Below it the reading loop (gc.collect, JSON, a flash write)
# runs back to back and starves the MQTT tasks; and every reading lands on flash (held in RAM
# at most 5 s, see outbox.py), so flash life shrinks with the rate: `make bench`
# prints the years per interval.
MIN_INTERVAL_MS = 10


def _interval_ms(v):
    return v >= MIN_INTERVAL_MS or ("at least %d (ms; readings that fast wear the flash out in months, "
                                    "see docs/config.md)" % MIN_INTERVAL_MS)


def _url(v):
    i = v.find("://")
    if i < 0 or v[:i] not in ("mqtt", "mqtts", "ws", "wss"):
        return "a URL starting with mqtt://, mqtts://, ws:// or wss://"
    return True


def _name(v):
    # a platform's name goes into the outbox state line ("name=head") and cmd.platform
    ok = 0 < len(v) <= 24 and all(c.isalpha() or c.isdigit() or c in "-_" for c in v)
    return ok or "1 to 24 letters, digits, - or _"


def _https_url(v):
    return v.startswith("https://") or v.startswith("http://") or "a URL starting with https://"


# Boards whose IDF heap holds one TLS cloud session beside the firmware's grown GC heap:
# (whether a token relay's fetch counts as a second, whether the firmware in ROMFS makes room
# for a second). Measured in the ESP32 model's chip mode: esp32-devkitc: two TLS clouds fail
# with ENOMEM, so does a TLS cloud after the relay's fetch, in ROMFS too; esp32-c3: two TLS
# clouds connect but cannot reconnect, a cloud with the relay does, and in ROMFS two reconnect
# (make bench BENCH_ARGS="firmware chip"). The host's `uplink validate` runs tls_refusal too
# (host_tools.fw_schema).
ONE_TLS_BOARDS = {"esp32-devkitc": (True, False), "esp32-c3": (False, True)}


def tls_refusal(board, urls, relays=0, romfs=False):
    """Why `board` cannot hold a TLS session per cloud URL (and `relays` token relays); None
    when it can. A cloud URL not given (None) is the cloud's default: every default is TLS.
    romfs: the firmware runs from flash (device.romfs, or device.frozen: the same measured
    figures or better, docs/hardware.md)."""
    if board not in ONE_TLS_BOARDS or (romfs and ONE_TLS_BOARDS[board][1]):
        return None
    n = len([u for u in urls if not u or u.split(":")[0] in ("mqtts", "wss", "https")])
    n += relays if ONE_TLS_BOARDS[board][0] else 0
    if n < 2:
        return None
    return ("%d TLS connections (TLS clouds, a token relay) on board %s: its RAM holds one TLS "
            "session beside the firmware and the second fails with ENOMEM; keep one (the others "
            "over mqtt://, static credentials), or use a board with more RAM (esp32-s3, or an "
            "ESP32 with PSRAM)%s" % (n, board, "" if romfs or not ONE_TLS_BOARDS[board][1] else
                                     ", or run the firmware from ROMFS (device.romfs)"))


def _tls_refusal(cfg, platforms):
    # the relay counts beside a session (measured: Weightron); Biotz takes it only for HTTP
    # posts, one request after the other (its MQTT refuses relay credentials anyway)
    relays = 0
    for p in platforms:
        c = p.get("credentials") or {}
        relays += c.get("source") == "relay" and p["kind"] != "biotz"
    dev = cfg["device"]
    return tls_refusal(dev["board"], [p["url"] for p in platforms], relays, dev["romfs"] or dev["frozen"])


def _place(cfg):
    why = place_refusal(cfg["device"]["romfs"], cfg["device"]["frozen"])
    if why:
        _fail("device.frozen", why)


def place_refusal(romfs, frozen):
    """Why device.romfs and device.frozen cannot both be set; None when they are not."""
    if romfs and frozen:
        return ("device.romfs is set too: the firmware runs from one place, the image's frozen "
                "package (frozen) or the ROMFS partition (romfs); set only one")
    return None


# key: (type, default[, check]). A dict type is a nested section; [type] a list of it.
CREDENTIALS = {
    "source": (str, "static", lambda v: v in ("static", "relay") or "'static' or 'relay'"),
    "username": (str, None),
    "password": (str, None),
    "url": (str, None, _https_url),
    "ca": (str, None),
    "device_id": (str, None),
    "key": (str, None),
    "key_id": (str, None),
    "min_life_s": (int, 60, _positive),
}

SCHEMA = {
    # board: the port's own when not given (board.DEFAULT), so a hand-written config on an
    # ESP32 still gets Wi-Fi and the watchdog. safe_mode_retry_s: safemode.py reads it raw.
    "device": ({"name": (str, REQUIRED), "board": (str, "esp32" if sys.platform == "esp32" else "host"),
                # log.level
                "console": (str, "data", lambda v: v in ("data", "info", "warn") or "'data', 'info' or 'warn'"),
                "safe_mode_retry_s": (int, 1200, _positive),
                # the board's MicroPython image has a ROMFS partition: deploy writes the uplink/
                # package there and its bytecode runs from flash (docs/hardware.md)
                "romfs": (bool, False),
                # the board's MicroPython image has the uplink/ package frozen in it (`uplink
                # build --freeze`): deploy leaves it off the filesystem (docs/hardware.md)
                "frozen": (bool, False),
                # no reading acknowledged this long with the network up: reset (App.stuck); 0 never
                "offline_reset_s": (int, 3600, _not_negative)}, REQUIRED),
    "wifi": (
        {"networks": ([{"ssid": (str, REQUIRED), "password": (str, "")}], []),
         "timeout_s": (int, 20, _positive)},
        {},
    ),
    "ntp": (
        {"servers": ([str], ["pool.ntp.org", "time.google.com"]),
         "resync_s": (int, 3600, _positive),
         "timeout_ms": (int, 2000, _positive)},
        {},
    ),
    # One cloud: `platform`. Several at once: `platforms`, a list of the same objects (the
    # first is the main one: OTA, and what `platform` means elsewhere), each with a `name`
    # (default: its kind) that is unique; parse() checks each against its kind's schema.
    "platform": (
        {"kind": (str, REQUIRED),
         "name": (str, None, _name),
         "url": (str, None, _url),
         "ca": (str, None),
         "insecure": (bool, False),
         "keepalive": (int, 60, _positive),
         "client_id": (str, None),
         "credentials": (CREDENTIALS, None)},
        REQUIRED,
    ),
    "telemetry": (
        {"interval_s": (int, 30, _positive), "interval_ms": (int, None, _interval_ms),
         "health": (bool, None), "batch": (int, 20, _positive)},
        {},
    ),
    "outbox": ({"max_bytes": (int, 32768, _positive), "dir": (str, "outbox"),
                "hold_ms": (int, 5000, _not_negative)}, {}),
}

_NAMES = {str: "text", int: "a whole number", bool: "true or false", float: "a number",
          list: "a list", dict: "an object"}


def _distance(a, b):
    # Levenshtein distance over two short key names: enough to suggest the key meant.
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a):
        cur = [i + 1]
        for j, cb in enumerate(b):
            cur.append(min(prev[j + 1] + 1, cur[j] + 1, prev[j] + (ca != cb)))
        prev = cur
    return prev[-1]


def suggest(key, known):
    best, dist = None, 3
    for k in known:
        d = _distance(key, k)
        if d < dist:
            best, dist = k, d
    return best


def _fail(path, msg) -> "NoReturn":
    raise ConfigError("%s: %s: %s" % (PATH, path, msg))


def _check_value(v, spec, path):
    if v is None and len(spec) > 1 and spec[1] is None:
        return None  # null for an optional key that defaults to absent: same as leaving it out
    typ = spec[0]
    if isinstance(typ, dict):
        return check(v, typ, path)
    if isinstance(typ, list):
        if not isinstance(v, list):
            _fail(path, "expected a list, got %s" % json.dumps(v))
        return [_check_value(x, (typ[0],), "%s[%d]" % (path, i)) for i, x in enumerate(v)]
    ok = isinstance(v, typ) and not (typ is int and isinstance(v, bool))
    if typ is float and isinstance(v, int) and not isinstance(v, bool):
        v, ok = float(v), True
    if not ok:
        _fail(path, "expected %s, got %s" % (_NAMES.get(typ, typ.__name__), json.dumps(v)))
    if len(spec) > 2:
        verdict = spec[2](v)
        if verdict is not True:
            _fail(path, "expected %s, got %s" % (verdict, json.dumps(v)))
    return v


def check(obj, schema, path=""):
    """Return a copy of obj with defaults filled in; raise ConfigError naming the bad key."""
    if not isinstance(obj, dict):
        _fail(path or "(top level)", "expected an object, got %s" % json.dumps(obj))
    out = {}
    for key in obj:
        if key not in schema:
            hint = suggest(key, schema)
            _fail(_join(path, key), "unknown key" + (" (did you mean '%s'?)" % hint if hint else
                  "; known keys: " + ", ".join(sorted(schema))))
    for key in schema:
        spec = schema[key]
        where = _join(path, key)
        if key in obj:
            out[key] = _check_value(obj[key], spec, where)
        elif spec[1] is REQUIRED:
            _fail(where, "missing (required)")
        elif isinstance(spec[0], dict) and spec[1] is not None:
            out[key] = check(spec[1], spec[0], where)
        else:
            out[key] = spec[1]
    return out


def _join(path, key):
    return key if not path else path + "." + key


def _section(p, extra, where):
    # the platform section's schema: the common keys plus those of its kind
    section = SCHEMA["platform"][0]
    if extra is not None and isinstance(p, dict):
        kind = p.get("kind")
        if kind not in extra:
            _fail(where + ".kind", "expected one of %s, got %s" % (", ".join(sorted(extra)), json.dumps(kind)))
        section = dict(section)
        section.update(extra[kind])
    return section


def parse(text, extra=None):
    """Check a config document. `extra` maps platform kind -> schema of its own keys. With
    `platforms` (several clouds), the result has both: `platforms` the checked list, each
    with its `name`, and `platform` its first entry."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ConfigError("%s: not valid JSON (%s)" % (PATH, e))
    many = doc.get("platforms") if isinstance(doc, dict) else None
    if many is None:
        schema = dict(SCHEMA)
        schema["platform"] = (_section(doc.get("platform") if isinstance(doc, dict) else None, extra, "platform"),
                              REQUIRED)
        cfg = check(doc, schema)
        _place(cfg)
        why = _tls_refusal(cfg, [cfg["platform"]])
        if why:
            _fail("platform", why)
        return cfg
    if "platform" in doc:
        _fail("platforms", "give either platform (one cloud) or platforms (several), not both")
    if not isinstance(many, list) or not many:
        _fail("platforms", "expected a list of one or more platform objects, got %s" % json.dumps(many))
    doc = dict(doc)
    del doc["platforms"]
    out = []
    for i, p in enumerate(many):
        where = "platforms[%d]" % i
        c = check(p, _section(p, extra, where), where)
        if not c["name"]:
            c["name"] = c["kind"]
        for k, q in enumerate(out):
            if q["name"] == c["name"]:
                _fail(where + ".name", "%r is platforms[%d]'s name too: give each a name of its own"
                      % (c["name"], k))
        out.append(c)
    doc["platform"] = {"kind": out[0]["kind"]}  # checked above, with its kind's keys
    cfg = check(doc, SCHEMA)
    _place(cfg)
    why = _tls_refusal(cfg, out)
    if why:
        _fail("platforms", why)
    cfg["platform"] = out[0]
    cfg["platforms"] = out
    return cfg


def load(path=PATH, extra=None):
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        raise ConfigError("%s: missing: put a config.json on the board (uplink deploy does this)" % path)
    except UnicodeError:  # a damaged file must stop in safe mode with a reason, not crash
        raise ConfigError("%s: not UTF-8 text (damaged? deploy it again)" % path)
    return parse(text, extra)


def save(cfg, path=PATH):
    """Persist a changed config (a provisioned token): temp file + rename, so a power cut
    leaves the old file or the new one. With several clouds `platform` is only platforms[0]
    (parse), so it is not written."""
    import os

    doc = cfg
    if cfg.get("platforms"):
        doc = dict(cfg)
        del doc["platform"]
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f)
    os.rename(path + ".tmp", path)
