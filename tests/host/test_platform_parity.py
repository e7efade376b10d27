"""One declaration of config.json: the firmware's SCHEMA (firmware/uplink/config.py for every
section, firmware/uplink/platforms/<kind>.py for each cloud's keys) is what the fleet file
accepts, with the firmware's defaults, and what provision renders.

Fails when the host and the firmware disagree on any section: a fleet field that is neither a
firmware key nor marked host-only, a host default that is not the firmware's, a firmware key
the fleet file refuses or provision leaves out, a rendered key the firmware's own checker
(run in MicroPython) refuses, a secret-looking firmware key the host would take in clear.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from host_tools import fw_schema
from host_tools.fleet import (
    HOST_ONLY,
    KINDS,
    SECRET_KEYS,
    SECRET_PATHS,
    Device,
    PlatformBase,
    parse_fleet,
)
from host_tools.provision import render
from host_tools.secrets import SecretStore
from tests.integration import mpy

# the least each kind needs to pass `validate` (plain MQTT: no CA involved)
BASE = {
    "thingsboard": {"provision_key": "secret:pk", "provision_secret": "secret:ps"},
    "blynk": {"token": "secret:bt"},
    "weightron": {"token": "secret:wt", "application_id": "app-1"},
    "biotz": {"device_id": "d-1", "customer_id": "c-1", "password": "secret:bp"},
}
# what the fleet file's cross-checks want beside a key (a combination, not a kind's minimum)
WITH = {
    ("blynk", "oauth_client_id"): {"oauth_client_secret": "secret:oc", "gateway_tokens": {"p": "secret:pt"}},
    ("blynk", "oauth_client_secret"): {"oauth_client_id": "oc-1", "gateway_tokens": {"p": "secret:pt"}},
    ("blynk", "gateway_info"): {"gateway_tokens": {"k": "secret:kt"}},
}
URL = "mqtt://broker.example:1883"
SECRET_WORDS = ("token", "secret", "password")


# keys whose valid values the host knows better than a generic sample (a board profile)
HOST_VALUES = {"board": "esp32-s3", "gateway_info": {"k": {"template_id": "TMPL1", "version": "1.0"}}}


def _sample(key: str, spec: tuple, secret: bool, path: str = ""):
    """A value of the key's firmware type that its firmware check accepts, unlike its default.
    A list of sections: one item with a sample of each of its keys."""
    typ, default = spec[0], spec[1]
    if key in HOST_VALUES:
        return HOST_VALUES[key]
    if secret:
        return {"sub-1": f"secret:s_{key}"} if typ is dict else f"secret:s_{key}"
    if isinstance(typ, list) and isinstance(typ[0], dict):
        where = f"{path}.{key}" if path else key
        return [{k: _sample(k, s, f"{where}.{k}" in SECRET_PATHS, where) for k, s in typ[0].items()}]
    if typ is str:  # "info": a console level
        cands = ([URL] if key == "url" else ["https://ingest.example"] if key.endswith("_url")
                 else [f"v-{key}", "mqtt", "http", "info"])
    elif typ is int:
        cands = [300, 4096, 60000]
    elif typ is bool:
        cands = [not default] if isinstance(default, bool) else [True]
    elif typ is float:
        cands = [1.5]
    elif typ is dict:
        cands = [{"k": "v"}]
    elif isinstance(typ, list):
        cands = [["a", "b"]] if typ[0] is str else [[1, 2]]
    else:
        raise AssertionError(f"{key}: no sample for firmware type {typ!r}: extend _sample")
    for v in cands:
        if len(spec) < 3 or spec[2](v) is True:
            return v
    raise AssertionError(f"{key}: no sample value passes the firmware's check")


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float, str)):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(x)}" for k, x in v.items()) + " }"


def _keys(kind: str) -> dict:
    """Every key a platform section of `kind` has on the board, but the files (`ca`, X.509's
    client_cert and client_key: files on both sides, converted: test_provision, test_x509)
    and the host-only ones."""
    out = {k: s for k, s in fw_schema.common().items() if k not in HOST_ONLY and k != "ca"}
    out.update({k: s for k, s in fw_schema.platform(kind).items() if k not in ("client_cert", "client_key")})
    return out


def _resolved(v):
    if isinstance(v, dict):
        return {k: _resolved(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_resolved(x) for x in v]
    return f"value-of-{v[7:]}" if isinstance(v, str) and v.startswith("secret:") else v


def _secret_names(v) -> set[str]:
    return {r[7:] for r in json.dumps(v).split('"') if r.startswith("secret:")}


def _store(tmp_path: Path, names) -> SecretStore:
    env = {f"UPLINK_SECRET_{n.upper()}": f"value-of-{n}" for n in names}
    return SecretStore(tmp_path / "secrets.json", use_keyring=False, env=env)


def test_every_fleet_field_is_a_firmware_key_or_marked_host_only():
    common = {k for k in fw_schema.common() if k not in HOST_ONLY}
    for kind in fw_schema.kinds():
        fleet_keys = set(KINDS[kind].model_fields) - set(HOST_ONLY)
        assert fleet_keys == common | set(fw_schema.platform(kind)), kind


def test_secret_looking_firmware_keys_are_held_as_references():
    for kind in fw_schema.kinds():
        keys = set(fw_schema.platform(kind))
        assert SECRET_KEYS[kind] <= keys, (kind, SECRET_KEYS[kind] - keys)
        looks = {k for k in keys if any(w in k for w in SECRET_WORDS)}
        assert looks <= SECRET_KEYS[kind], (f"{kind}: {looks - SECRET_KEYS[kind]} look like secrets: "
                                            "list them in fleet.SECRET_KEYS")


def _device_table() -> dict:
    """The firmware keys of a fleet file's device table, read here from config.SCHEMA on its
    own (not through fleet.py): SCHEMA["device"]'s keys but `name`, and the other sections
    but the platform's as tables."""
    config = fw_schema.config()
    return {**{k: s for k, s in config["device"][0].items() if k != "name"},
            **{k: s for k, s in config.items() if k not in ("device", "platform")}}


def _required(spec) -> bool:
    return spec[1] is fw_schema.required()


def _compare(model, schema: dict, path: str, host_only: set[str] = frozenset()):  # type: ignore[assignment]
    """The model's fields are the section's keys (and `host_only`), with the firmware's types
    of section and its defaults; nested sections and lists of them too."""
    fields = model.model_fields
    assert set(fields) - host_only == set(schema), (path, set(fields) ^ set(schema))
    for key, spec in schema.items():
        where, f, typ = f"{path}.{key}" if path else key, fields[key], spec[0]
        if _required(spec):
            assert f.is_required(), where
            continue
        if isinstance(typ, list) and isinstance(typ[0], dict):
            _compare(f.annotation.__args__[0], typ[0], where)
            assert f.default == spec[1], where
        elif isinstance(typ, dict):
            _compare(f.annotation, typ, where)
            assert f.default.model_dump() == f.annotation().model_dump(), where
        else:
            assert f.default == spec[1], (where, f.default, spec[1])


def test_every_device_section_is_the_firmwares_with_its_defaults():
    """device (its keys at the top of a device table), wifi, ntp, telemetry, outbox and the
    keys every platform shares: the same keys and the same defaults on both sides."""
    _compare(Device, _device_table(), "", {"name", "platform", "platforms"})
    common = {k: s for k, s in fw_schema.common().items() if k not in HOST_ONLY}
    _compare(PlatformBase, common, "platform", {"credentials"})


def _paths(schema: dict, path: str = ""):
    for key, spec in schema.items():
        where = f"{path}.{key}" if path else key
        yield where
        typ = spec[0][0] if isinstance(spec[0], list) else spec[0]
        if isinstance(typ, dict):
            yield from _paths(typ, where)


def test_secret_looking_device_keys_are_held_as_references():
    paths = set(_paths(_device_table()))
    assert SECRET_PATHS <= paths, SECRET_PATHS - paths
    looks = {p for p in paths if any(w in p.rsplit(".", 1)[-1] for w in SECRET_WORDS)}
    assert looks <= SECRET_PATHS, f"{looks - SECRET_PATHS} look like secrets: list them in fleet.SECRET_PATHS"


def test_every_device_key_is_accepted_by_the_fleet_file_and_rendered(tmp_path):
    """Each key of each section but the platform's, one device per key: validated, rendered
    as written (secrets resolved), and accepted by the firmware's own checker."""
    devices, expect, names = [], {}, set()
    config = fw_schema.config()
    for section, (keys, _) in config.items():
        if section == "platform":
            continue
        for key, spec in keys.items():
            if key == "name" and section == "device":
                continue  # the table's name: every device has it
            value = _sample(key, spec, f"{section}.{key}" in SECRET_PATHS, section)
            name = f"{section}-{key}".replace("_", "-")
            table = "" if section == "device" else f".{section}"
            devices.append(f"[devices.{name}{table}]\n{key} = {_toml(value)}\n"
                           f"[devices.{name}.platform]\nkind = \"blynk\"\nurl = \"{URL}\"\n"
                           "token = \"secret:bt\"\n")
            expect[name] = (section, key, value)
            names.update(_secret_names(value) | {"bt"})
    fleet = parse_fleet("\n".join(devices), tmp_path / "fleet.toml")
    store = _store(tmp_path, names)
    configs = {}
    for name, (section, key, value) in expect.items():
        configs[name], _ = render(fleet, name, store)
        assert configs[name][section].get(key) == _resolved(value), (name, configs[name][section])
    assert {n: v for n, (v, _) in _firmware_parse(tmp_path, configs).items()} == {n: "OK" for n in configs}


def test_a_device_that_sets_nothing_gets_the_firmwares_defaults(tmp_path):
    """What provision renders for a device that sets nothing is what the board makes of a
    config.json that says nothing: each section's defaults, the board's own checker's."""
    fleet = parse_fleet(f'[devices.d]\nwifi.networks = [{{ ssid = "open" }}]\n[devices.d.platform]\n'
                        f'kind = "blynk"\nurl = "{URL}"\ntoken = "secret:bt"\n', tmp_path / "fleet.toml")
    host, _ = render(fleet, "d", _store(tmp_path, ["bt"]))
    bare = {"device": {"name": "d"}, "wifi": {"networks": [{"ssid": "open"}]},
            "platform": {"kind": "blynk", "url": URL, "token": "value-of-bt"}}
    verdict, board = _firmware_parse(tmp_path, {"d": bare})["d"]
    assert verdict == "OK", board
    for section in fw_schema.config():
        if section != "platform":
            assert host[section] == _no_none(board[section]), section
    # the keys every platform shares (url: the host writes the kind's default URL out)
    shared = set(fw_schema.common()) - {"url"}
    assert ({k: v for k, v in host["platform"].items() if k in shared}
            == {k: v for k, v in _no_none(board["platform"]).items() if k in shared})


def _no_none(d: dict) -> dict:
    return {k: (_no_none(v) if isinstance(v, dict) else v) for k, v in d.items() if v is not None}


def test_every_firmware_key_is_accepted_by_the_fleet_file_and_rendered(tmp_path):
    """Each key of each kind, one device per key: validated as written, rendered as written
    (secrets resolved), and the whole config.json accepted by the firmware's own checker."""
    devices, expect, names = [], {}, set()
    for kind in fw_schema.kinds():
        for key, spec in _keys(kind).items():
            secret = key in SECRET_KEYS.get(kind, set())
            table = {"url": URL, **BASE[kind], **WITH.get((kind, key), {}), key: _sample(key, spec, secret)}
            name = f"{kind}-{key}".replace("_", "-")
            devices.append(f"[devices.{name}.platform]\nkind = \"{kind}\"\n"
                           + "".join(f"{k} = {_toml(v)}\n" for k, v in table.items()))
            expect[name] = (key, table[key])
            names.update(_secret_names(table))
    fleet = parse_fleet("\n".join(devices), tmp_path / "fleet.toml")
    store = _store(tmp_path, names)
    configs = {}
    for name, (key, value) in expect.items():
        config, _ = render(fleet, name, store)
        assert config["platform"].get(key) == _resolved(value), (name, config["platform"])
        configs[name] = config
    verdicts = _firmware_verdicts(tmp_path, configs)
    assert verdicts == {n: "OK" for n in configs}


def test_a_key_only_the_host_renders_is_refused_by_the_firmware(tmp_path):
    # the check above is only as good as the firmware's refusal of an unknown key
    fleet = parse_fleet(f'[devices.d.platform]\nkind = "blynk"\nurl = "{URL}"\ntoken = "secret:bt"\n',
                        tmp_path / "fleet.toml")
    config, _ = render(fleet, "d", _store(tmp_path, ["bt"]))
    config["platform"]["timestamp"] = True
    verdict = _firmware_verdicts(tmp_path, {"d": config})["d"]
    assert verdict.startswith("ERR") and "platform.timestamp: unknown key" in verdict
    assert "timestamped" in verdict  # the firmware's suggestion


def test_docs_list_every_firmware_key():
    """docs/platforms.md's "Every platform key" table names each key of each kind."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "platforms.md").read_text()
    table = doc.split("## Every platform key", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, set[str]] = {}
    kind = None
    for line in table.splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) < 2 or not cells[1].startswith("`"):
            continue
        kind = cells[0] or kind
        rows.setdefault(kind or "", set()).update(re.findall(r"`(\w+)`", cells[1]))
    for kind in fw_schema.kinds():
        missing = set(fw_schema.platform(kind)) - rows.get(kind, set())
        assert not missing, f"docs/platforms.md: {kind} keys not in the table: {sorted(missing)}"


@pytest.mark.parametrize("kind", ["thingsboard", "blynk", "weightron", "biotz"])
def test_the_kinds_the_host_knows_are_the_firmwares(kind):
    assert fw_schema.kinds() == tuple(KINDS)
    assert kind in fw_schema.kinds()


CHECKER = """
import json, sys
from uplink import config, platforms
with open(sys.argv[1]) as f:
    docs = json.load(f)
for name in sorted(docs):
    try:
        print("VERDICT", name, "OK", json.dumps(config.parse(json.dumps(docs[name]), platforms.SCHEMAS)))
    except config.ConfigError as e:
        print("VERDICT", name, "ERR", e)
print("DONE")
"""


def _firmware_parse(tmp_path: Path, configs: dict) -> dict:
    """name -> ("OK", the checked config) or ("ERR", reason): firmware/uplink/config.py's
    parse() with every platform's SCHEMA, in MicroPython, as the board checks its
    config.json at boot (defaults filled in)."""
    docs = tmp_path / "configs.json"
    docs.write_text(json.dumps(configs))
    p = mpy.start(CHECKER, args=(docs,))
    assert p.wait(60) == 0, p.output
    out = {}
    for line in p.output.splitlines():
        if line.startswith("VERDICT "):
            _, name, verdict, rest = line.split(" ", 3)
            out[name] = (verdict, json.loads(rest) if verdict == "OK" else rest)
    return out


def _firmware_verdicts(tmp_path: Path, configs: dict) -> dict:
    """name -> "OK" or "ERR <reason>"."""
    return {n: v if v == "OK" else f"{v} {r}" for n, (v, r) in _firmware_parse(tmp_path, configs).items()}
