"""boards/*.json and the table compiled into firmware/uplink/board.py must agree: the board
cannot read the JSON profiles at runtime, so board.PROFILES is a copy kept in step here."""

import ast
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def firmware_profiles() -> dict:
    tree = ast.parse((ROOT / "firmware" / "uplink" / "board.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "PROFILES" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("no PROFILES table in board.py")


def json_profiles() -> dict:
    out = {}
    for p in sorted((ROOT / "boards").glob("*.json")):
        d = json.loads(p.read_text())
        assert d["id"] == p.stem, f"{p.name}: id {d['id']!r} differs from the file name"
        out[d["id"]] = (d["backend"], d["led_pin"], d["led_active_low"], d["has_chip_temperature"])
    return out


def test_every_json_profile_is_compiled_in_and_agrees():
    assert firmware_profiles() == json_profiles()


def test_required_boards_exist():
    assert {"esp32-devkitc", "esp32-s3", "esp32-c3", "host"} <= set(json_profiles())
