"""Which firmware modules go into one device's bundle: what the firmware can import for this
device, found from the import statements (ast), not a hand-kept list.

Every cloud adapter (uplink/platforms/<kind>.py) and the host board's backend
(uplink/board_host.py) is imported by name only when configured: the others are dead weight
on the board's flash, and each one a module a mistake could load into the heap. So the
bundle holds what boot.py, main.py and user.py reach, plus the configured adapter and, on
the host board only, board_host.py, each with what they import in turn.
"""

from __future__ import annotations

import ast
import typing
from pathlib import Path

ENTRY = ("boot.py", "main.py", "user.py")
HOST_BACKEND = "uplink/board_host.py"


def adapter(kind: str) -> str:
    return f"uplink/platforms/{kind}.py"


def _module_file(firmware: Path, name: str) -> str | None:
    parts = name.split(".")
    for rel in ("/".join(parts) + ".py", "/".join(parts) + "/__init__.py"):
        if (firmware / rel).is_file():
            return rel
    return None


def _imports(firmware: Path, rel: str) -> set[str]:
    """The firmware files `rel` imports (anywhere in it: the firmware imports lazily), with
    the packages they sit in."""
    tree = ast.parse((firmware / rel).read_bytes(), rel)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    out: set[str] = set()
    for name in names:
        parts = name.split(".")
        for n in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
            f = _module_file(firmware, ".".join(parts[:n]))
            if f:
                out.add(f)
    return out


def device_modules(firmware: Path, kind: str | typing.Iterable[str], host_board: bool) -> set[str]:
    """Source paths (relative to firmware/) of the modules this device's bundle holds; `kind`
    may be several (a device on several clouds)."""
    optional = {str(p.relative_to(firmware).as_posix()) for p in (firmware / "uplink" / "platforms").glob("*.py")
                if p.name != "__init__.py" and p.stem in _kinds()}
    optional.add(HOST_BACKEND)
    kinds = [kind] if isinstance(kind, str) else list(kind)
    wanted = {adapter(k) for k in kinds} | ({HOST_BACKEND} if host_board else set())
    cut = optional - wanted
    todo = [r for r in ENTRY if (firmware / r).is_file()] + [w for w in wanted if (firmware / w).is_file()]
    seen: set[str] = set()
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen.add(rel)
        todo.extend(f for f in _imports(firmware, rel) if f not in cut and f not in seen)
    return seen


def _kinds() -> set[str]:
    from host_tools.fleet import KINDS

    return set(KINDS)


def select(build_files: dict[str, Path], modules: set[str]) -> dict[str, Path]:
    """The build's files (board path -> file) that come from `modules` (.py sources)."""
    keep = {m[:-3] for m in modules}
    return {p: f for p, f in build_files.items() if p.rsplit(".", 1)[0] in keep}
