"""The firmware's config declarations (fw_schema.py) made into pydantic models of the fleet file.

A firmware entry `key: (type, default[, check])` becomes a field of that type; its check runs
as a validator, so the host refuses what the board would, in the board's words. A nested
section (a dict type) becomes a model of its own, a list of them a list of that model.
The one thing only the host knows, which keys hold secrets, comes from fleet.py as key paths
("wifi.networks.password": `password` of every item of wifi.networks).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from host_tools import fw_schema
from host_tools.fleet_errors import describe
from host_tools.secrets import NAME_RE, PREFIX

SECRET = "secret"  # json_schema_extra marker: this field must be a secret reference


class Strict(BaseModel):
    # strict: "30" is not 30 and "yes" is not true; TOML has types, a wrong one is a mistake
    model_config = ConfigDict(extra="forbid", validate_default=False, strict=True)


def secret_field(default: Any = None, **kw) -> Any:
    return Field(default, json_schema_extra={SECRET: True}, **kw)


def is_secret(model: type[BaseModel], key: str) -> bool:
    extra = model.model_fields[key].json_schema_extra
    return isinstance(extra, dict) and bool(extra.get(SECRET))


def check_ref(v):
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


def refs_only(*names: str):
    """A validator: these fields must be secret references."""
    return field_validator(*names)(classmethod(lambda cls, v: check_ref(v)))


def _refs(cls, v, info):
    # a table of secrets (Blynk's gateway_tokens) holds references only, each one named
    if isinstance(v, dict):
        for k, t in v.items():
            try:
                check_ref(t)
            except ValueError as e:
                raise ValueError(f"{info.field_name}.{k} {e}") from None
        return v
    return check_ref(v)


def _checked(checks: dict):
    """A validator running the firmware's own check of each key (`at least 256`, ...)."""
    def run(cls, v, info):
        if v is not None:
            verdict = checks[info.field_name](v)
            if verdict is not True:
                raise ValueError(f"expected {verdict}, got {describe(v, [info.field_name])}")
        return v
    return field_validator(*checks)(classmethod(run))


_TYPES: dict[Any, Any] = {str: str, int: int, bool: bool, float: float, dict: dict[str, Any],
                          list: list[Any]}


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _annotation(typ, path: str, secrets: set[str]) -> Any:
    """The pydantic type of a firmware type: str, int, [type], a nested section, ..."""
    if isinstance(typ, list):
        return list[_annotation(typ[0], path, secrets)]  # type: ignore[misc]
    if isinstance(typ, dict):
        return model(path, typ, secrets)
    return _TYPES[typ]


def _field(spec: tuple, ann: Any, secret: bool, defaults: bool) -> tuple[Any, Any]:
    default = spec[1]
    extra = {SECRET: True} if secret else None
    if default is fw_schema.required():
        return ann, Field(..., json_schema_extra=extra)  # type: ignore[arg-type]
    if not defaults or default is None:
        return ann | None, Field(None, json_schema_extra=extra)  # type: ignore[arg-type]
    if isinstance(spec[0], dict):
        default = ann(**default)  # a section's default: its keys' defaults, filled in
    return ann, Field(default, json_schema_extra=extra)  # type: ignore[arg-type]


def fields(schema: dict, path: str, secrets: set[str], defaults: bool = True) -> dict:
    """pydantic field definitions of a firmware section's keys. defaults: the firmware's own
    (rendered into config.json as they are); else None, so a key left out stays out of
    config.json and the board applies its default. A secret of type dict (a table of
    secrets) holds references only."""
    out = {}
    for key, spec in schema.items():
        where = _join(path, key)
        secret = where in secrets
        ann = (dict[str, str] if secret and spec[0] is dict
               else _annotation(spec[0], where, secrets))
        out[key] = _field(spec, ann, secret, defaults)
    return out


def validators(schema: dict, path: str, secrets: set[str], name: str) -> dict:
    """The firmware's checks of a section's keys, and its secrets' reference check. Named
    per model: a subclass's validator of the same name would replace its base's."""
    v = {}
    # as the firmware: a list or a nested section is not checked as a whole
    checks = {k: spec[2] for k, spec in schema.items()
              if len(spec) > 2 and not isinstance(spec[0], (list, dict))}
    if checks:
        v[f"_checks_{name}"] = _checked(checks)
    refs = sorted(k for k in schema if _join(path, k) in secrets)
    if refs:
        v[f"_refs_{name}"] = field_validator(*refs)(classmethod(_refs))
    return v


def model(path: str, schema: dict, secrets: set[str], base: type = Strict,
          name: str | None = None, defaults: bool = True, **extra: Any) -> Any:
    """The model of the firmware section at `path` ("wifi", "wifi.networks"); `extra`: more
    field definitions (host-only ones)."""
    name = name or "".join(p.title().replace("_", "") for p in path.split("."))
    return create_model(name, __base__=base,  # type: ignore[call-overload]
                        __validators__=validators(schema, path, secrets, name.lower()),
                        **fields(schema, path, secrets, defaults), **extra)
