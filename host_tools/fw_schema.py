"""The firmware's declaration of config.json, read on the host: the one list of keys.

Every section of config.json is declared once, in firmware/uplink/config.py SCHEMA (device,
wifi, ntp, telemetry, outbox, and the keys every platform shares), and each cloud's own keys
in its firmware module's SCHEMA (firmware/uplink/platforms/<kind>.py). The fleet models
(fleet.py) and the config.json rendering (provision.py) follow from these, so a key added
there is valid in the fleet file and reaches the board without a second edit.

The firmware modules are plain Python, but they import MicroPython-only names (time.ticks_ms,
the adapter base class) at the top. So each module's top-level constants and functions are
run here in a namespace of their own; imports and classes are skipped, and a statement that
needs one of them (`SCHEMAS = _Schemas()`) is left out. A SCHEMA entry is
`key: (type, default[, check])`: type str, int, bool, float, dict, list, [type] (a list of
it) or a dict (a nested section); check(value) returns True or what was expected.
"""

from __future__ import annotations

import ast
import functools
import json
import sys
from pathlib import Path


def _uplink() -> Path:
    # the firmware that gets built: $UPLINK_FIRMWARE_DIR, the checkout's or the installed one
    from host_tools.project import firmware_dir

    return firmware_dir() / "uplink"


@functools.cache
def module(rel: str) -> dict:
    """The top-level names of firmware/uplink/<rel> that need nothing imported."""
    path = _uplink() / rel
    tree = ast.parse(path.read_text(), str(path))
    ns: dict = {"__name__": "firmware." + rel, "json": json, "sys": sys}
    for node in tree.body:
        if not isinstance(node, (ast.Assign, ast.AnnAssign, ast.FunctionDef)):
            continue
        code = compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec")
        try:
            exec(code, ns)  # noqa: S102 (our own firmware source)
        except NameError:
            continue  # uses an import or a class: not part of the declaration
    return ns


def _get(rel: str, name: str):
    ns = module(rel)
    if name not in ns:
        raise RuntimeError(f"firmware/uplink/{rel}: no top-level {name} the host can read "
                           "(it must not depend on imports or classes)")
    return ns[name]


def config_name(name: str):
    """A top-level name of firmware/uplink/config.py (a constant, or a function that needs
    no import), e.g. tls_refusal: the firmware's own rule, run by `uplink validate`."""
    return _get("config.py", name)


def kinds() -> tuple[str, ...]:
    return tuple(_get("platforms/__init__.py", "KINDS"))


def platform(kind: str) -> dict:
    """SCHEMA of platform `kind`: its own keys, beside the common ones."""
    return _get(f"platforms/{kind}.py", "SCHEMA")


def config() -> dict:
    """config.SCHEMA: every section of config.json (device, wifi, ntp, platform, ...)."""
    return _get("config.py", "SCHEMA")


def common() -> dict:
    """The keys every platform section has (config.SCHEMA["platform"])."""
    return config()["platform"][0]


def constant(kind: str, name: str):
    """A constant of platform `kind`'s module, e.g. DEFAULT_URL."""
    return _get(f"platforms/{kind}.py", name)


def required() -> object:
    return _get("config.py", "REQUIRED")
