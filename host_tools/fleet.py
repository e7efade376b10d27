"""The fleet file (fleet.toml): defaults plus one entry per device, checked with pydantic.

```toml
[defaults]                       # merged under every device (tables deep-merged, lists replaced)
board = "esp32-devkitc"
wifi.networks = [{ ssid = "home", password = "secret:wifi_home" }]

[relay]                          # optional: the token relay (uplink relay) devices ask
url = "https://192.168.1.10:8443"
hosts = ["192.168.1.10"]

[devices.greenhouse-1.platform]
kind = "thingsboard"
token = "secret:gh1_token"
```

Every string may be a secret reference "secret:NAME" (see secrets.py); fields that hold
secrets (tokens, passwords, keys) must be references, so a fleet file can be shared.

A mistake is reported as ``fleet.toml:12: device 'greenhouse-1': platform.tokn: unknown key
(did you mean 'token'?)`` — the file and line, the device, the key path, the nearest valid
key; a wrong type says what to write instead.
This, fleet_schema.py (the firmware's declarations as models) and fleet_errors.py (how a
mistake is told) are the only modules that import pydantic.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
)

from host_tools import fw_schema
from host_tools.errors import ExitCode, UplinkError
from host_tools.fleet_errors import key_hint, line_number, message, written_in
from host_tools.fleet_schema import Strict, model, refs_only, secret_field
from host_tools.project import shipped
from host_tools.secrets import PREFIX
from host_tools.toml_lines import key_lines, line_of, parse_path

REPO = Path(__file__).resolve().parent.parent
BOARDS_DIR = shipped("boards")  # boards/ of the checkout, or of the installed package


class FleetError(UplinkError):
    """The fleet file cannot be used; `problems` lists each one as a line a person can act on."""

    code = ExitCode.FLEET

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))

    def lines(self) -> list[str]:
        return self.problems


# -- device sections: config.SCHEMA, read from the firmware (fw_schema) ---------------------
# Every key of the device's sections (device, wifi, ntp, telemetry, outbox) is declared once,
# in firmware/uplink/config.py SCHEMA, with its type, default and check; the models are
# generated from it (fleet_schema.py), so a key added there is valid here and rendered by
# provision. The keys of SCHEMA["device"] sit at the top of a [devices.NAME] table, beside the
# other sections' tables. What follows here is host-only and marked so.
#
# HOST-ONLY: key paths of the device tables that hold secrets (the fleet file holds
# "secret:NAME" references only). A key whose name says it is a secret must be listed
# (tests/host/test_platform_parity.py).
SECRET_PATHS = {"wifi.networks.password"}


def device_schema() -> dict:
    """The firmware keys of a [devices.NAME] table: SCHEMA["device"]'s keys, and the other
    sections as tables. Not `device.name` (HOST-ONLY: the table's own name) nor `platform`
    (its models follow, one per kind)."""
    config = fw_schema.config()
    keys = {k: spec for k, spec in config["device"][0].items() if k != "name"}
    sections = {k: spec for k, spec in config.items() if k not in ("device", "platform")}
    assert not set(keys) & set(sections), "a device key named like a section"
    return {**keys, **sections}


class StaticCredentials(Strict):
    username: str | None = None
    password: str | None = secret_field()
    _v = refs_only("password")


def _cred_tag(v):
    if isinstance(v, str):
        return "relay"
    return "static"


Credentials = Annotated[
    Union[Annotated[Literal["relay"], Tag("relay")], Annotated[StaticCredentials, Tag("static")]],
    Discriminator(_cred_tag, custom_error_type="credentials",
                  custom_error_message="expected \"relay\" or a table {username, password}"),
]


_LOOPBACK = re.compile(r"^(127(\.\d{1,3}){3}|\[::1\]|localhost)$", re.IGNORECASE)


def _https_url(v: str, allow_loopback_http: bool, sends: str) -> str:
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://(\[[^\]]*\]|[^/:?#]+)", v)
    if not m:
        raise ValueError(f"expected an https:// URL, got {json.dumps(v)} (add https://)")
    scheme, host = m.group(1).lower(), m.group(2)
    if scheme == "https":
        return v
    if scheme != "http":
        raise ValueError(f"expected an https:// URL, got {json.dumps(v)}")
    if not _LOOPBACK.match(host):
        raise ValueError(f"http:// would send {sends} in clear: use https://")
    if not allow_loopback_http:
        raise ValueError(f"http:// would send {sends} in clear: use https://, or for a "
                         "provider on this machine set allow_loopback_http = true")
    return v


WEIGHTRON_SCOPES = ("openid", "offline_access")


class _OidcBase(Strict):
    # before the URLs: their validators read it (pydantic validates fields in order)
    allow_loopback_http: bool = False
    _token_url_gets: typing.ClassVar[str] = "the client secret"

    @field_validator("token_url", "access_url", check_fields=False)
    @classmethod
    def _urls(cls, v, info):
        sends = cls._token_url_gets if info.field_name == "token_url" else "the API key and token"
        return _https_url(v, bool(info.data.get("allow_loopback_http")), sends)


class WeightronOidc(_OidcBase):
    token_url: str = "https://auth.weightron.cloud/oidc/token"
    client_id: str
    client_secret: str = secret_field(...)
    # Weightron's docs: "openid is required for all requests" (offline_access may be added)
    scope: str = "openid"
    api_key: str = secret_field(...)
    access_url: str = "https://api.weightron.cloud/access"
    application_id: str | None = None
    _v = refs_only("client_secret", "api_key")

    @field_validator("scope")
    @classmethod
    def _scope(cls, v):
        # Weightron (docs.weightron.cloud, Authentication): openid is required for all
        # requests, offline_access is the only other value its token endpoint accepts
        words = v.split()
        other = [w for w in words if w not in WEIGHTRON_SCOPES]
        if other:
            raise ValueError(f"Weightron does not accept {' '.join(other)!r}: the scope is \"openid\", "
                             "optionally with \"offline_access\"")
        if "openid" not in words:
            raise ValueError(f"Weightron requires openid in every request, got {v!r}: use \"openid\" "
                             "(optionally \"openid offline_access\")")
        return " ".join(dict.fromkeys(words))


class BiotzOidc(_OidcBase):
    _token_url_gets: typing.ClassVar[str] = "the password"
    token_url: str = "https://auth.biotz.io/realms/biotz-platform/protocol/openid-connect/token"
    client_id: str = "biotz-platform-devices"
    username: str
    password: str = secret_field(...)
    _v = refs_only("password")


_URL_RE = re.compile(r"^(mqtt|mqtts|ws|wss)://[^/:]+(:\d+)?(/.*)?$")


# -- platforms: the firmware's SCHEMA made into models ---------------------------------------
# Every key a platform section takes on the board is declared once, in the firmware
# (fw_schema.py): config.SCHEMA["platform"] for the common keys, platforms/<kind>.py SCHEMA
# for each cloud's own. The models below are generated from those declarations, with the
# firmware's own type and check. What follows here is host-only and marked so:
#
# HOST-ONLY: which keys hold secrets (the fleet file holds "secret:NAME" references only;
# provision resolves them). A firmware key whose name says it is a secret must be listed
# (tests/host/test_platform_parity.py).
SECRET_KEYS = {
    "thingsboard": {"token", "provision_key", "provision_secret", "claim_secret", "client_key"},
    "blynk": {"token", "oauth_client_secret", "gateway_tokens"},  # gateway_tokens: every value
    "weightron": {"token"},
    "biotz": {"password"},
}
# HOST-ONLY fields of a platform table: `kind` (picks the model), `credentials` in its fleet
# form ("relay" or {username, password}; provision renders the firmware's section), `oidc`
# (the OIDC client the relay uses: it never reaches the board). Every other field is a
# firmware key.
HOST_ONLY = ("kind", "credentials", "oidc")

class _PlatformHost(Strict):
    credentials: Credentials | None = None  # HOST-ONLY form, see HOST_ONLY

    @field_validator("url", check_fields=False)
    @classmethod
    def _url(cls, v):  # stricter than the board's check: a host name is needed too
        if v is not None and not _URL_RE.match(v):
            raise ValueError("expected a URL like mqtts://host:8883 (mqtt, mqtts, ws or wss)")
        return v

    def effective_url(self) -> str:
        return self.url or DEFAULT_URLS[self.kind]  # type: ignore[attr-defined]

    @property
    def relay(self) -> bool:
        return self.credentials == "relay"


_COMMON = {k: spec for k, spec in fw_schema.common().items() if k not in HOST_ONLY}
# the common keys (url, ca, insecure, keepalive, client_id) with the firmware's defaults;
# `ca` here is a PEM or DER file relative to the fleet file (provision writes ca.der)
PlatformBase = model("platform", _COMMON, set(), base=_PlatformHost, name="PlatformBase")


class _WeightronHost(PlatformBase):  # type: ignore[valid-type,misc]
    oidc: WeightronOidc | None = None  # HOST-ONLY: the relay's client


class _BiotzHost(PlatformBase):  # type: ignore[valid-type,misc]
    oidc: BiotzOidc | None = None  # HOST-ONLY: the relay's password grant

    @field_validator("ingest_url", check_fields=False)
    @classmethod
    def _ingest(cls, v):  # HOST-ONLY check: the board takes any text
        if v is not None and not re.match(r"^https://[^/]+$", v):
            raise ValueError(f"expected https://host, got {json.dumps(v)}")
        return v

    def device_url(self) -> str:
        """What the device connects to: the broker, or HTTP ingestion."""
        if self.transport == "http":  # type: ignore[attr-defined]
            return self.ingest_url or fw_schema.constant("biotz", "INGEST_URL")  # type: ignore[attr-defined]
        return self.effective_url()


def _platform_model(kind: str, name: str, base: type) -> Any:
    # a kind's own keys default to None: left out of config.json, the board's default applies
    secrets = {f"platform.{k}" for k in SECRET_KEYS.get(kind, set())}
    return model("platform", fw_schema.platform(kind), secrets, base=base, name=name,
                 defaults=False, kind=(Literal[kind], ...))  # type: ignore[valid-type]


DEFAULT_URLS = {k: fw_schema.constant(k, "DEFAULT_URL") for k in fw_schema.kinds()}
ThingsBoard = _platform_model("thingsboard", "ThingsBoard", PlatformBase)
Blynk = _platform_model("blynk", "Blynk", PlatformBase)
Weightron = _platform_model("weightron", "Weightron", _WeightronHost)
Biotz = _platform_model("biotz", "Biotz", _BiotzHost)
KINDS = {"thingsboard": ThingsBoard, "blynk": Blynk, "weightron": Weightron, "biotz": Biotz}


def _kind_tag(v):
    return v.get("kind") if isinstance(v, dict) else getattr(v, "kind", None)


Platform = Annotated[
    Union[tuple(Annotated[m, Tag(k)] for k, m in KINDS.items())],  # type: ignore[misc]
    Discriminator(_kind_tag, custom_error_type="platform_kind",
                  custom_error_message="expected kind = " + ", ".join(f"'{k}'" for k in KINDS)),
]


def board_ids() -> list[str]:
    return sorted(p.stem for p in BOARDS_DIR.glob("*.json"))


def board_profile(board_id: str) -> dict:
    path = BOARDS_DIR / f"{board_id}.json"
    if not path.exists():
        raise FleetError([f"unknown board '{board_id}' (known: {', '.join(board_ids())})"])
    return json.loads(path.read_text())


DeviceBase = model("", device_schema(), SECRET_PATHS, name="DeviceBase")


class Device(DeviceBase):  # type: ignore[valid-type,misc]
    name: str = ""  # HOST-ONLY: filled from the [devices.NAME] key
    platform: Platform
    # One device on several clouds: [[devices.NAME.platforms]] tables instead of one
    # [devices.NAME.platform]; `platform` is then the first of them (firmware config.py).
    platforms: list[Platform] = []

    @field_validator("board")
    @classmethod
    def _board(cls, v):  # HOST-ONLY check: the firmware takes any name
        known = board_ids()
        if v not in known:
            near = difflib.get_close_matches(v, known, n=1, cutoff=0.6)
            raise ValueError(
                f"unknown board '{v}'" + (f" (did you mean '{near[0]}'?)" if near else "")
                + f"; known boards: {', '.join(known)} (profiles in boards/)"
            )
        return v

    def profile(self) -> dict:
        return board_profile(self.board)


class Relay(Strict):
    listen: str = "0.0.0.0:8443"
    url: str | None = None
    hosts: list[str] = []
    min_life_s: int = Field(60, gt=0)
    # replicas (docs/relay.md, "Replicas on Redis"): the shared store; its password as a
    # secret reference, never in the URL
    redis: str | None = None
    redis_password: str | None = secret_field()
    provider_rate: float = Field(20.0, gt=0)  # provider calls per second, fleet-wide
    provider_burst: int = Field(50, ge=1)
    trusted_proxies: list[str] = []  # balancers whose PROXY protocol v2 header is believed
    admin_listen: str | None = None  # /healthz, /readyz, /metrics (plain HTTP: keep it private)
    key_grace_s: int = Field(7 * 86400, ge=0)  # a rotated device key is still accepted this long
    _v = refs_only("redis_password")

    @field_validator("url")
    @classmethod
    def _url(cls, v):
        if v is not None and not re.match(r"^https?://[^/]+", v):
            raise ValueError("expected the URL devices use, like https://192.168.1.10:8443")
        return v

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, v):
        import ipaddress

        for x in v:
            try:
                ipaddress.ip_network(x, strict=False)
            except ValueError:
                raise ValueError(f"{x!r} is not an IP address or network (like 10.0.0.2 or 10.0.0.0/24)") from None
        return v

    @field_validator("redis")
    @classmethod
    def _redis(cls, v):
        if v is not None and not re.match(r"^rediss?://[^/@]+(/\d+)?$", v):
            raise ValueError("expected redis://HOST:PORT/DB (or rediss:// for TLS); "
                             "the password goes in redis_password = \"secret:NAME\"")
        return v


class Fleet(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    path: Path
    defaults: dict[str, Any] = {}
    relay: Relay | None = None
    devices: dict[str, Device] = {}
    raw: dict[str, Any] = {}  # each device's merged table, as written (secret refs unresolved)

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def state_dir(self) -> Path:
        """Host-side state that is not a secret (the relay's CA and certificate, caches):
        $UPLINK_STATE_DIR, or .uplink/ next to the fleet file."""
        env = os.environ.get("UPLINK_STATE_DIR")
        return Path(env).expanduser() if env else self.base_dir / ".uplink"

    def device(self, name: str) -> Device:
        if name in self.devices:
            return self.devices[name]
        near = difflib.get_close_matches(name, list(self.devices), n=1, cutoff=0.5)
        known = ", ".join(sorted(self.devices)) or "none"
        raise FleetError([
            f"{self.path.name}: no device '{name}'"
            + (f" (did you mean '{near[0]}'?)" if near else "")
            + f"; devices: {known}"
        ])

    def resolve_path(self, p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else self.base_dir / q


# -- loading ------------------------------------------------------------------------------
TOP_KEYS = {"defaults", "relay", "devices"}


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_fleet(text: str, path: Path) -> Fleet:
    label = path.name
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise FleetError([f"{label}: not valid TOML: {e}"]) from None
    lines = key_lines(text)

    def at(*keys) -> str:
        """`fleet.toml:12`: the line of the key path (or of its table, when it is missing)."""
        n = line_of(lines, tuple(k for part in keys for k in (parse_path(part) if isinstance(part, str) else part)))
        return f"{label}:{n}" if n else label

    problems: list[str] = []
    for k in doc:
        if k not in TOP_KEYS:
            problems.append(f"{at((k,))}: {k}: unknown top-level table" + key_hint(k, sorted(TOP_KEYS)))
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        problems.append(f"{at(('defaults',))}: defaults: expected a table")
        defaults = {}
    relay = None
    relay_broken = False  # reported once; what depends on [relay] is not reported again
    if "relay" in doc:
        try:
            relay = Relay.model_validate(doc["relay"])
        except ValidationError as err:
            relay_broken = True
            for e in err.errors():
                where, msg = message(dict(e, loc=("relay",) + tuple(e["loc"])), _Top)
                problems.append(f"{at(where)}: {where}: {msg}")
    devices: dict[str, Device] = {}
    raws: dict[str, Any] = {}
    from_defaults: dict[tuple[str, str], list[str]] = {}  # (key, problem) -> devices
    table = doc.get("devices", {})
    if not isinstance(table, dict):
        problems.append(f"{at(('devices',))}: devices: expected tables [devices.NAME]")
        table = {}
    if not table and not problems:
        problems.append(f"{label}: no devices: add a table [devices.NAME] for each board")
    for name, entry in table.items():
        here = ("devices", name)
        if not isinstance(entry, dict):
            problems.append(f"{at(here)}: device '{name}': expected a table [devices.{name}]")
            continue
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name):
            problems.append(f"{at(here)}: device '{name}': device names use letters, digits, '_', '-', '.'")
            continue
        if "name" in entry:
            problems.append(f"{at(here, ('name',))}: device '{name}': name: unknown key (the device's "
                            f"name is the table's: [devices.{name}])")
            continue
        merged = merge(defaults, entry)
        raws[name] = merged
        many = isinstance(merged.get("platforms"), list) and merged["platforms"]
        if many and "platform" in entry:
            problems.append(f"{at(here, ('platforms',))}: device '{name}': platforms: give either "
                            f"[devices.{name}.platform] (one cloud) or [[devices.{name}.platforms]] "
                            "(several), not both")
            continue
        try:
            dev = Device.model_validate(dict(merged, platform=many[0]) if many else merged)
        except ValidationError as err:
            for e in err.errors():
                if many and e["loc"][:1] == ("platform",):
                    continue  # platforms[0] itself: reported under that name
                where, msg = message(e, Device, KINDS)
                if written_in(entry, where.split(".")) or not written_in(defaults, where.split(".")):
                    problems.append(f"{at(here, where)}: device '{name}': {where}: {msg}")
                else:  # one mistake in [defaults]: one report, not one per device
                    from_defaults.setdefault((where, msg), []).append(name)
            continue
        dev.name = name
        problems.extend(f"{at(here, p.split(':', 1)[0])}: device '{name}': {p}"
                        for p in _cross_checks(dev, relay, relay_broken))
        devices[name] = dev
    for (where, msg), names in from_defaults.items():
        problems.append(f"{at('defaults.' + where)}: [defaults] {where}: {msg} (for device"
                        f"{'s' if len(names) > 1 else ''} {', '.join(repr(n) for n in names)})")
    if problems:
        raise FleetError(sorted(problems, key=line_number))  # in file order, as a compiler
    return Fleet(path=path, defaults=defaults, relay=relay, devices=devices, raw=raws)


class _Top(BaseModel):
    relay: Relay


def _cross_checks(dev: Device, relay: Relay | None, relay_broken: bool = False, fit: bool = True) -> list[str]:
    """What no single field can say: combinations that leave the device unable to connect.
    (A [relay] table with mistakes of its own has been reported: not again from here.)"""
    out = []
    if fit:  # the device as a whole (not again for each of its platforms below)
        why = fw_schema.config_name("place_refusal")(dev.romfs, dev.frozen)
        if why:
            out.append("frozen: " + why)
        why = _tls_refusal(dev, relay)
        if why:
            out.append(("platforms: " if dev.platforms else "platform: ") + why)
    if dev.platforms:  # each cloud checked alone; its messages name it platforms[i]
        names = [q.name or q.kind for q in dev.platforms]
        for i, q in enumerate(dev.platforms):
            out += ["platforms[%d]%s" % (i, m[len("platform"):]) for m in _cross_checks(
                Device.model_construct(**dict(dev.__dict__, platform=q, platforms=[])), relay, relay_broken,
                fit=False)]
            if names[i] in names[:i]:
                out.append(f"platforms[{i}].name: {names[i]!r} names platforms[{names.index(names[i])}] "
                           "too: give each a name of its own")
        return out
    p = dev.platform
    if p.relay:
        if not relay_broken and (relay is None or not relay.url):
            out.append("platform.credentials: \"relay\" needs a [relay] table with url = "
                       "\"https://<this machine>:8443\" (what the device connects to)")
        if isinstance(p, (ThingsBoard, Blynk)):
            out.append(f"platform.credentials: \"relay\" is for OIDC clouds (weightron, biotz), "
                       f"not {p.kind}")
        elif getattr(p, "oidc", None) is None:
            out.append("platform.oidc: missing (required when credentials = \"relay\")")
    if isinstance(p, ThingsBoard) and not p.relay and not isinstance(p.credentials, StaticCredentials):
        if bool(p.client_cert) != bool(p.client_key):
            out.append("platform.client_cert and client_key: both are needed (X.509: the device's "
                       "certificate file and its private key as \"secret:NAME\")")
        elif not p.token and not p.client_cert and not (p.provision_key and p.provision_secret):
            out.append("platform: needs token = \"secret:NAME\", client_cert and client_key (X.509), or "
                       "provision_key and provision_secret (first-boot provisioning, or `uplink provision "
                       "--register`)")
    if isinstance(p, Blynk):
        oauth = p.oauth_client_id or p.oauth_client_secret
        if oauth and not (p.oauth_client_id and p.oauth_client_secret):
            out.append("platform.oauth_client_id and oauth_client_secret: both are needed (the "
                       "OAuth client's Client ID and Client Secret)")
        elif oauth and not p.gateway_tokens:
            out.append("platform.gateway_tokens: missing: an OAuth client login is a gateway "
                       "session (gateway_tokens = { pump-1 = \"secret:NAME\" })")
        elif not oauth and not p.token and not p.gateway_tokens:
            out.append("platform.token: missing (the device auth token, as \"secret:NAME\")")
        problem = fw_schema.module("platforms/blynk_gateway.py")["info_problem"]  # the board's own check
        for name, d in (p.gateway_info or {}).items():
            why = problem(d) if name in (p.gateway_tokens or {}) else "not a sub-device in platform.gateway_tokens"
            if why:
                out.append(f"platform.gateway_info.{name}: {why}")
    if isinstance(p, Weightron) and not p.relay and not p.token and p.credentials is None:
        out.append("platform: needs credentials = \"relay\" (with [platform.oidc]) or token")
    if isinstance(p, Biotz):
        for k in ("device_id", "customer_id"):
            if not getattr(p, k):
                out.append(f"platform.{k}: missing (from the device's Biotz credentials file)")
        if not p.relay and not p.password and p.credentials is None:
            out.append("platform.password: missing (the device password, as \"secret:NAME\")")
    out.extend(_contract_checks(p))
    return out


# Boards whose firmware, run from the filesystem, cannot count on reconnecting over TLS: measured
# in the ESP32 model's chip mode (README "Memory": an esp32-devkitc reconnects 0 times in 100
# from its filesystem, 100 in 100 from ROMFS). A warning, not a refusal: the first connect works.
TLS_NEEDS_ROMFS = ("esp32-devkitc",)


def memory_warnings(dev: Device) -> list[str]:
    """What the board's memory makes fragile without being refused (`uplink validate`)."""
    if dev.board not in TLS_NEEDS_ROMFS or dev.romfs or dev.frozen:
        return []
    urls = [q.device_url() if isinstance(q, Biotz) else q.effective_url() for q in dev.platforms or [dev.platform]]
    from host_tools import ca

    if not any(ca.needs_tls(u) for u in urls):
        return []
    return [f"device '{dev.name}': board {dev.board} over TLS with the firmware on its filesystem: its heap "
            "leaves no room for a reconnect's TLS handshake (ENOMEM after the first dropped connection); "
            "set romfs = true with a MicroPython image that has a ROMFS partition (`uplink docs hardware`, "
            "\"Firmware in ROMFS\"), or frozen = true with the firmware frozen into the image (\"Firmware "
            "frozen into the image\"), or use an esp32-s3 or esp32-c3"]


def _tls_refusal(dev: Device, relay: Relay | None) -> str | None:
    """What the board's RAM cannot hold at once: the firmware's own rule (config.tls_refusal),
    over each cloud's URL and, for relay credentials, the relay's."""
    urls: list[str | None] = []
    relays = 0
    for q in dev.platforms or [dev.platform]:
        urls.append(q.device_url() if isinstance(q, Biotz) else q.effective_url())
        relays += q.relay and not isinstance(q, Biotz)  # (Biotz: HTTP posts, one after the other)
    return fw_schema.config_name("tls_refusal")(dev.board, urls, relays, dev.romfs or dev.frozen)


def _contract_checks(p) -> list[str]:
    """Each cloud's documented login and TLS rules (docs/platforms.md)."""
    out = []
    if isinstance(p, Biotz):
        if p.transport != "http" and p.relay:
            out.append("platform.credentials: Biotz MQTT logs in with the Device ID and the device "
                       "password; the relay's id_token is for HTTP ingestion (set transport = "
                       "\"http\", or password = \"secret:NAME\" without credentials)")
        if p.transport == "http" and not p.relay:
            out.append("platform.transport: \"http\" posts with an id_token from the token relay "
                       "(set credentials = \"relay\" and [platform.oidc])")
    url = p.device_url() if isinstance(p, Biotz) else p.effective_url()
    if not p.ca and not p.insecure:
        from host_tools import ca

        if ca.needs_tls(url) and ca.default_ca(p.kind, url) is None:
            out.append(f"platform.ca: {url} is TLS and uplink ships no CA for that host (set ca = "
                       f"\"path/to/root.pem\", the CA that signed the server's certificate)")
    return out


def load_fleet(path: Path | str = "fleet.toml") -> Fleet:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FleetError([
            f"{path}: no fleet file here: make a project with `uplink init` (or pass --fleet PATH)"
        ]) from None
    return parse_fleet(text, path)


# -- secret references ---------------------------------------------------------------------
def secret_refs(obj, path: str = "") -> dict[str, str]:
    """key path -> secret name, for every "secret:NAME" reference in a tree."""
    out: dict[str, str] = {}
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(secret_refs(v, f"{path}.{k}" if path else str(k)))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.update(secret_refs(v, f"{path}[{i}]"))
    elif isinstance(obj, str) and obj.startswith(PREFIX):
        out[path] = obj[len(PREFIX):]
    return out
