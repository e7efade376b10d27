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

A mistake is reported as ``fleet.toml: device 'greenhouse-1': platform.tokn: unknown key
(did you mean 'token'?)`` — the file, the device, the key path, the nearest valid key.
This is the only module that imports pydantic.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
import types
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

from host_tools.secrets import NAME_RE, PREFIX

REPO = Path(__file__).resolve().parent.parent
BOARDS_DIR = REPO / "boards"

SECRET = "secret"  # json_schema_extra marker: this field must be a secret reference

DEFAULT_URLS = {
    "thingsboard": "mqtts://mqtt.thingsboard.cloud:8883",
    "blynk": "mqtts://blynk.cloud:8883",
    "weightron": "wss://mqtt.weightron.cloud:443/mqtt",
    "biotz": "mqtts://broker.biotz.io:8883",
}


class FleetError(Exception):
    """The fleet file cannot be used; `problems` lists each one as a line a person can act on."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def secret_field(default: Any = None, **kw) -> Any:
    return Field(default, json_schema_extra={SECRET: True}, **kw)


def _check_ref(v):
    if v is None:
        return v
    if not isinstance(v, str) or not v.startswith(PREFIX):
        raise ValueError(
            "holds a secret, so it must be a reference like \"secret:NAME\" (store the value "
            "with `uplink secrets set NAME`), not the value itself"
        )
    if not NAME_RE.match(v[len(PREFIX):]):
        raise ValueError(f"'{v[len(PREFIX):]}' is not a valid secret name")
    return v


class Strict(BaseModel):
    # strict: "30" is not 30 and "yes" is not true; TOML has types, a wrong one is a mistake
    model_config = ConfigDict(extra="forbid", validate_default=False, strict=True)

    @classmethod
    def secret_fields(cls) -> set[str]:
        return {n for n, f in cls.model_fields.items()
                if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get(SECRET)}


def _refs_only(*names: str):
    """A validator: these fields must be secret references."""
    return field_validator(*names)(classmethod(lambda cls, v: _check_ref(v)))


# -- device sections ----------------------------------------------------------------------
class WifiNetwork(Strict):
    ssid: str
    password: str | None = secret_field()
    _v = _refs_only("password")


class Wifi(Strict):
    networks: list[WifiNetwork] = []
    timeout_s: int = Field(20, gt=0)


class Ntp(Strict):
    servers: list[str] = ["pool.ntp.org", "time.google.com"]
    resync_s: int = Field(3600, gt=0)
    timeout_ms: int = Field(2000, gt=0)


class Telemetry(Strict):
    interval_s: int = Field(30, gt=0)
    health: bool = True
    batch: int = Field(20, gt=0)


class Outbox(Strict):
    max_bytes: int = Field(32768, gt=0)
    dir: str = "outbox"


class StaticCredentials(Strict):
    username: str | None = None
    password: str | None = secret_field()
    _v = _refs_only("password")


def _cred_tag(v):
    if isinstance(v, str):
        return "relay"
    return "static"


Credentials = Annotated[
    Union[Annotated[Literal["relay"], Tag("relay")], Annotated[StaticCredentials, Tag("static")]],
    Discriminator(_cred_tag, custom_error_type="credentials",
                  custom_error_message="expected \"relay\" or a table {username, password}"),
]


class WeightronOidc(Strict):
    token_url: str = "https://auth.weightron.cloud/oidc/token"
    client_id: str
    client_secret: str = secret_field(...)
    # Weightron's docs: "openid is required for all requests" (offline_access may be added)
    scope: str = "openid"
    api_key: str = secret_field(...)
    access_url: str = "https://api.weightron.cloud/access"
    application_id: str | None = None
    _v = _refs_only("client_secret", "api_key")


class BiotzOidc(Strict):
    token_url: str = "https://auth.biotz.io/realms/biotz-platform/protocol/openid-connect/token"
    client_id: str = "biotz-platform-devices"
    username: str
    password: str = secret_field(...)
    _v = _refs_only("password")


_URL_RE = re.compile(r"^(mqtt|mqtts|ws|wss)://[^/:]+(:\d+)?(/.*)?$")


class PlatformBase(Strict):
    url: str | None = None
    ca: str | None = None  # a PEM or DER file, relative to the fleet file
    insecure: bool = False
    keepalive: int = Field(60, gt=0)
    client_id: str | None = None
    credentials: Credentials | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v):
        if v is not None and not _URL_RE.match(v):
            raise ValueError("expected a URL like mqtts://host:8883 (mqtt, mqtts, ws or wss)")
        return v

    def effective_url(self) -> str:
        return self.url or DEFAULT_URLS[self.kind]  # type: ignore[attr-defined]

    @property
    def relay(self) -> bool:
        return self.credentials == "relay"


class ThingsBoard(PlatformBase):
    kind: Literal["thingsboard"]
    token: str | None = secret_field()
    provision_key: str | None = secret_field()
    provision_secret: str | None = secret_field()
    gateway_devices: list[str] = []
    shared_attributes: list[str] | None = None
    claim_secret: str | None = secret_field()
    claim_duration_ms: int | None = Field(None, gt=0)
    max_payload: int | None = Field(None, ge=256)
    _v = _refs_only("token", "provision_key", "provision_secret", "claim_secret")


class Blynk(PlatformBase):
    kind: Literal["blynk"]
    token: str | None = secret_field()
    template_id: str | None = None
    template_name: str | None = None
    gateway_tokens: dict[str, str] = Field({}, json_schema_extra={SECRET: True})
    timestamped: bool | None = None

    @field_validator("gateway_tokens")
    @classmethod
    def _gw(cls, v):
        for k, t in v.items():
            try:
                _check_ref(t)
            except ValueError as e:
                raise ValueError(f"gateway_tokens.{k} {e}") from None
        return v

    _v = _refs_only("token")


class Weightron(PlatformBase):
    kind: Literal["weightron"]
    application_id: str | None = None
    device_id: str | None = None
    topic: str | None = None
    token: str | None = secret_field()
    values_key: str | None = None
    fields: dict[str, Any] | None = None
    command_topic: str | None = None
    # devices/hubs under the application to watch ("devices/<id>", "hubs/#", "#"); writing
    # needs the Devices write permission, off by default: publish only when it is granted
    watch: list[str] | None = None
    publish: bool | None = None
    max_payload: int | None = Field(None, ge=256)
    oidc: WeightronOidc | None = None
    _v = _refs_only("token")


class Biotz(PlatformBase):
    kind: Literal["biotz"]
    device_id: str | None = None
    customer_id: str | None = None
    password: str | None = secret_field()
    message_type: str = "telemetry"
    # "http": readings are POSTed to HTTP ingestion with the relay's id_token (MQTT takes
    # the device password, never the token)
    transport: Literal["mqtt", "http"] = "mqtt"
    ingest_url: str | None = Field(None, pattern=r"^https://[^/]+$")
    oidc: BiotzOidc | None = None
    _v = _refs_only("password")

    def device_url(self) -> str:
        """What the device connects to: the broker, or HTTP ingestion."""
        if self.transport == "http":
            return self.ingest_url or "https://ingestion-http.biotz.io"
        return self.effective_url()


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


class Device(Strict):
    name: str = ""  # filled from the [devices.NAME] key
    board: str = "host"
    wifi: Wifi = Wifi()
    ntp: Ntp = Ntp()
    platform: Platform
    telemetry: Telemetry = Telemetry()
    outbox: Outbox = Outbox()

    @field_validator("board")
    @classmethod
    def _board(cls, v):
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

    @field_validator("url")
    @classmethod
    def _url(cls, v):
        if v is not None and not re.match(r"^https?://[^/]+", v):
            raise ValueError("expected the URL devices use, like https://192.168.1.10:8443")
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


def _unwrap(tp):
    """Strip Optional/Annotated; returns (base type, union tag -> type or None)."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
            continue
        if origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) == 1:
                tp = args[0]
                continue
            tags = {}
            for a in args:
                meta = getattr(a, "__metadata__", ())
                for m in meta:
                    if isinstance(m, Tag):
                        tags[m.tag] = typing.get_args(a)[0]
            return tp, tags
        return tp, None


def _walk(model, loc) -> tuple[list[str], list[str] | None]:
    """Follow a pydantic error location through the models: (clean path, known keys at the
    end or None). Union tags (the platform kind) are dropped from the path."""
    path: list[str] = []
    tp: Any = model
    keys = None
    for part in loc:
        tp, tags = _unwrap(tp)
        if tags is not None:
            if part in tags:  # a discriminator tag pydantic puts in the location
                tp = tags[part]
                continue
            tp = None
        if isinstance(part, int):
            path[-1:] = [f"{path[-1]}[{part}]"] if path else [f"[{part}]"]
            args = typing.get_args(tp) if tp is not None else ()
            tp = args[0] if args else None
            continue
        path.append(str(part))
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            keys = list(tp.model_fields)
            f = tp.model_fields.get(part)
            tp = f.annotation if f is not None else None
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
            keys = None
        else:
            tp = None
            keys = None
    return path, keys


def _key_hint(key: str, known: list[str]) -> str:
    known = [k for k in known if k != "name"]
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if near:
        return f" (did you mean '{near[0]}'?)"
    return f"; valid keys here: {', '.join(known)}"


def _message(e: dict, model) -> tuple[str, str]:
    loc = e["loc"]
    path, _ = _walk(model, loc)
    where = ".".join(path) or "(top level)"
    etype = e["type"]
    if etype == "extra_forbidden":
        parent, known = _walk(model, loc[:-1] + ("__x__",))
        return where, "unknown key" + _key_hint(str(loc[-1]), known or [])
    if etype == "missing":
        return where, "missing (required)"
    msg = e["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if etype == "platform_kind":
        got = e.get("input", {}).get("kind") if isinstance(e.get("input"), dict) else None
        if got is None:
            return where + ".kind", "missing (required): one of " + ", ".join(KINDS)
        near = difflib.get_close_matches(str(got), list(KINDS), n=1, cutoff=0.5)
        hint = f"did you mean '{near[0]}'? " if near else ""
        return where + ".kind", f"unknown kind {json.dumps(got)} ({hint}known: {', '.join(KINDS)})"
    if etype == "literal_error" and path and path[-1] == "credentials":
        msg = "expected \"relay\" or a table {username, password}"
    got = e.get("input")
    if etype not in ("missing",) and not isinstance(got, (dict, list)) and got is not None:
        shown = got if not (isinstance(got, str) and _looks_secret(path)) else "<hidden>"
        if str(got) not in msg:
            msg = f"{msg} (got {json.dumps(shown)})"
    return where, msg


def _looks_secret(path: list[str]) -> bool:
    last = path[-1] if path else ""
    return any(w in last for w in ("password", "token", "secret", "key"))


def _origin(raw_device: dict, path: list[str]) -> bool:
    """True when the key path exists in the device's own table (else it came from defaults)."""
    node: Any = raw_device
    for p in path:
        m = re.match(r"^(.*?)((\[\d+\])*)$", p)
        name = m.group(1) if m else p
        if not isinstance(node, dict) or name not in node:
            return False
        node = node[name]
        for idx in re.findall(r"\[(\d+)\]", m.group(2) if m else ""):
            if not isinstance(node, list) or int(idx) >= len(node):
                return False
            node = node[int(idx)]
    return True


def parse_fleet(text: str, path: Path) -> Fleet:
    label = path.name
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise FleetError([f"{label}: not valid TOML: {e}"]) from None
    problems: list[str] = []
    for k in doc:
        if k not in TOP_KEYS:
            problems.append(f"{label}: {k}: unknown top-level table" + _key_hint(k, sorted(TOP_KEYS)))
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        problems.append(f"{label}: defaults: expected a table")
        defaults = {}
    relay = None
    if "relay" in doc:
        try:
            relay = Relay.model_validate(doc["relay"])
        except ValidationError as err:
            for e in err.errors():
                where, msg = _message(dict(e, loc=("relay",) + tuple(e["loc"])), _Top)
                problems.append(f"{label}: {where}: {msg}")
    devices: dict[str, Device] = {}
    raws: dict[str, Any] = {}
    table = doc.get("devices", {})
    if not isinstance(table, dict):
        problems.append(f"{label}: devices: expected tables [devices.NAME]")
        table = {}
    if not table and not problems:
        problems.append(f"{label}: no devices: add a table [devices.NAME] for each board")
    for name, entry in table.items():
        if not isinstance(entry, dict):
            problems.append(f"{label}: device '{name}': expected a table [devices.{name}]")
            continue
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name):
            problems.append(f"{label}: device '{name}': device names use letters, digits, '_', '-', '.'")
            continue
        if "name" in entry:
            problems.append(f"{label}: device '{name}': name: unknown key (the device's name is "
                            f"the table's: [devices.{name}])")
            continue
        merged = merge(defaults, entry)
        raws[name] = merged
        try:
            dev = Device.model_validate(merged)
        except ValidationError as err:
            for e in err.errors():
                where, msg = _message(e, Device)
                own = _origin(entry, where.split(".")) or not _origin(defaults, where.split("."))
                src = "" if own else " (set in [defaults])"
                problems.append(f"{label}: device '{name}': {where}: {msg}{src}")
            continue
        dev.name = name
        problems.extend(f"{label}: device '{name}': {p}" for p in _cross_checks(dev, relay))
        devices[name] = dev
    if problems:
        raise FleetError(problems)
    return Fleet(path=path, defaults=defaults, relay=relay, devices=devices, raw=raws)


class _Top(BaseModel):
    relay: Relay


def _cross_checks(dev: Device, relay: Relay | None) -> list[str]:
    """What no single field can say: combinations that leave the device unable to connect."""
    out = []
    p = dev.platform
    if p.relay:
        if relay is None or not relay.url:
            out.append("platform.credentials: \"relay\" needs a [relay] table with url = "
                       "\"https://<this machine>:8443\" (what the device connects to)")
        if isinstance(p, (ThingsBoard, Blynk)):
            out.append(f"platform.credentials: \"relay\" is for OIDC clouds (weightron, biotz), "
                       f"not {p.kind}")
        elif getattr(p, "oidc", None) is None:
            out.append("platform.oidc: missing (required when credentials = \"relay\")")
    if isinstance(p, ThingsBoard) and not p.relay and not isinstance(p.credentials, StaticCredentials):
        if not p.token and not (p.provision_key and p.provision_secret):
            out.append("platform: needs token = \"secret:NAME\", or provision_key and "
                       "provision_secret (first-boot provisioning, or `uplink provision --register`)")
    if isinstance(p, Blynk) and not p.token and not p.gateway_tokens:
        out.append("platform.token: missing (the device auth token, as \"secret:NAME\")")
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


def _contract_checks(p) -> list[str]:
    """Each cloud's documented login and TLS rules (docs/platforms.md)."""
    out = []
    if isinstance(p, Biotz):
        if p.transport == "mqtt" and p.relay:
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
            f"{path}: no fleet file here: create one (see docs/host_tools.md) or pass --fleet PATH"
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
