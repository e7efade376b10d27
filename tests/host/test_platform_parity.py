"""One declaration per platform: the firmware's SCHEMA (firmware/uplink/platforms/<kind>.py,
config.SCHEMA["platform"]) is what the fleet file accepts and what provision renders.

Fails when a key is added on one side only: a fleet field that is neither a firmware key nor
marked host-only, a firmware key the fleet file refuses or provision leaves out, a rendered
key the firmware's own checker (run in MicroPython) refuses, a secret-looking firmware key
the host would take in clear.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from host_tools import fw_schema
from host_tools.fleet import HOST_ONLY, KINDS, SECRET_KEYS, parse_fleet
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
}
URL = "mqtt://broker.example:1883"
SECRET_WORDS = ("token", "secret", "password")


def _sample(kind: str, key: str, spec: tuple):
    """A value of the key's firmware type that its firmware check accepts, unlike its default."""
    typ, default = spec[0], spec[1]
    secret = key in SECRET_KEYS.get(kind, set())
    if secret:
        return {"sub-1": f"secret:s_{key}"} if typ is dict else f"secret:s_{key}"
    if typ is str:
        cands = [URL] if key == "url" else ["https://ingest.example"] if key.endswith("_url") else [f"v-{key}", "mqtt", "http"]
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
        raise AssertionError(f"{kind}.{key}: no sample for firmware type {typ!r}: extend _sample")
    for v in cands:
        if len(spec) < 3 or spec[2](v) is True:
            return v
    raise AssertionError(f"{kind}.{key}: no sample value passes the firmware's check")


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float, str)):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(x)}" for k, x in v.items()) + " }"


def _keys(kind: str) -> dict:
    """Every key a platform section of `kind` has on the board, but `ca` (a file on both
    sides, converted: test_provision) and the host-only ones."""
    out = {k: s for k, s in fw_schema.common().items() if k not in HOST_ONLY and k != "ca"}
    out.update(fw_schema.platform(kind))
    return out


def _resolved(v):
    if isinstance(v, dict):
        return {k: _resolved(x) for k, x in v.items()}
    return f"value-of-{v[7:]}" if isinstance(v, str) and v.startswith("secret:") else v


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
        assert looks <= SECRET_KEYS[kind], f"{kind}: {looks - SECRET_KEYS[kind]} look like secrets: list them in fleet.SECRET_KEYS"


def test_every_firmware_key_is_accepted_by_the_fleet_file_and_rendered(tmp_path):
    """Each key of each kind, one device per key: validated as written, rendered as written
    (secrets resolved), and the whole config.json accepted by the firmware's own checker."""
    devices, expect, names = [], {}, set()
    for kind in fw_schema.kinds():
        for key, spec in _keys(kind).items():
            table = {"url": URL, **BASE[kind], **WITH.get((kind, key), {}), key: _sample(kind, key, spec)}
            name = f"{kind}-{key}".replace("_", "-")
            devices.append(f"[devices.{name}.platform]\nkind = \"{kind}\"\n"
                           + "".join(f"{k} = {_toml(v)}\n" for k, v in table.items()))
            expect[name] = (key, table[key])
            names.update(r[7:] for r in json.dumps(table).split('"') if r.startswith("secret:"))
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
        config.parse(json.dumps(docs[name]), platforms.SCHEMAS)
        print("VERDICT", name, "OK")
    except config.ConfigError as e:
        print("VERDICT", name, "ERR", e)
print("DONE")
"""


def _firmware_verdicts(tmp_path: Path, configs: dict) -> dict:
    """name -> "OK" or "ERR <reason>": firmware/uplink/config.py's parse() with every
    platform's SCHEMA, in MicroPython, as the board checks its config.json at boot."""
    docs = tmp_path / "configs.json"
    docs.write_text(json.dumps(configs))
    p = mpy.start(CHECKER, args=(docs,))
    assert p.wait(60) == 0, p.output
    out = {}
    for line in p.output.splitlines():
        if line.startswith("VERDICT "):
            _, name, verdict = line.split(" ", 2)
            out[name] = verdict
    return out
