"""How a fleet file mistake is told: pydantic's error (a location in the models, a type
code) turned into the key path a person wrote, the nearest valid key, and what to write
instead. Used by fleet.py only."""

from __future__ import annotations

import difflib
import json
import re
import types
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel, Tag


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


def key_hint(key: str, known: list[str]) -> str:
    known = [k for k in known if k != "name"]
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if near:
        return f" (did you mean '{near[0]}'?)"
    return f"; valid keys here: {', '.join(known)}"


def message(e: dict, model, kinds: typing.Iterable[str] = ()) -> tuple[str, str]:
    """(key path, what is wrong and how to fix it) for one pydantic error."""
    loc = e["loc"]
    path, _ = _walk(model, loc)
    where = ".".join(path) or "(top level)"
    etype = e["type"]
    if etype == "extra_forbidden":
        parent, known = _walk(model, loc[:-1] + ("__x__",))
        return where, "unknown key" + key_hint(str(loc[-1]), known or [])
    if etype == "missing":
        return where, "missing (required)"
    msg = e["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if etype == "platform_kind":
        got = e.get("input", {}).get("kind") if isinstance(e.get("input"), dict) else None
        if got is None:
            return where + ".kind", "missing (required): one of " + ", ".join(kinds)
        near = difflib.get_close_matches(str(got), list(kinds), n=1, cutoff=0.5)
        hint = f"did you mean '{near[0]}'? " if near else ""
        return where + ".kind", f"unknown kind {json.dumps(got)} ({hint}known: {', '.join(kinds)})"
    if etype == "literal_error" and path and path[-1] == "credentials":
        return where, "expected \"relay\" or a table {username, password}, got " \
            + describe(e.get("input"), path)
    expected = _expected(etype, e.get("ctx") or {})
    if expected:
        return where, f"{expected}, got {describe(e.get('input'), path)}{_fix(etype, e.get('input'))}"
    return where, msg


def _expected(etype: str, ctx: dict) -> str | None:
    """What a person should write, for pydantic's type and range errors (its own wording,
    'Input should be a valid integer', says neither what was wrong nor how to fix it)."""
    simple = {
        "int_type": "expected a whole number", "int_from_float": "expected a whole number",
        "float_type": "expected a number", "bool_type": "expected true or false",
        "string_type": "expected a string in quotes", "list_type": "expected a list [...]",
        "dict_type": "expected a table", "model_type": "expected a table",
        "model_attributes_type": "expected a table",
    }
    if etype in simple:
        return simple[etype]
    if etype == "greater_than":
        return f"expected a number above {ctx.get('gt')}"
    if etype == "greater_than_equal":
        return f"expected a number of at least {ctx.get('ge')}"
    if etype == "literal_error":
        return f"expected {ctx.get('expected')}"
    return None


def describe(v, path: list[str]) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return f"the number {v}"
    if isinstance(v, str):
        return "a string (hidden: it may be a secret)" if _looks_secret(path) else f"the string {json.dumps(v)}"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "a table"
    return "nothing" if v is None else type(v).__name__


def _fix(etype: str, v) -> str:
    if isinstance(v, str) and etype in ("int_type", "float_type"):
        if re.fullmatch(r"[+-]?\d+(\.\d+)?", v.strip()):
            return " (remove the quotes)"
    if isinstance(v, str) and etype == "bool_type":
        return " (remove the quotes)" if v.lower() in ("true", "false") else " (write true or false, no quotes)"
    if isinstance(v, (int, float)) and not isinstance(v, bool) and etype == "string_type":
        return " (put it in quotes)"
    if isinstance(v, float) and etype in ("int_type", "int_from_float"):
        return " (no decimal point)"
    return ""


def _looks_secret(path: list[str]) -> bool:
    last = path[-1] if path else ""
    return any(w in last for w in ("password", "token", "secret", "key"))


def written_in(raw_device: dict, path: list[str]) -> bool:
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




def line_number(problem: str) -> int:
    m = re.match(r"^[^:]*:(\d+):", problem)
    return int(m.group(1)) if m else 0
