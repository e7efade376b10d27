"""Which modules go into one device's bundle: what the firmware and the user's code can import
for this device, found from the import statements (ast), not a hand-kept list.

Every cloud adapter (uplink/platforms/<kind>.py) and the host board's backend
(uplink/board_host.py) is imported by name only when configured: the others are dead weight
on the board's flash, and each one a module a mistake could load into the heap. So the
bundle holds what boot.py, main.py and user.py reach, plus the configured adapter and, on
the host board only, board_host.py, each with what they import in turn.

The modules are a map of board path ("uplink/app.py") -> source file, as
host_tools.project.sources() merges the firmware and a user's project; a firmware directory
stands for all of its own .py files.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

ENTRY = ("boot.py", "main.py", "user.py")
HOST_BACKEND = "uplink/board_host.py"


def adapter(kind: str) -> str:
    return f"uplink/platforms/{kind}.py"


def tree_files(root: Path) -> dict[str, Path]:
    """Board path -> file for every .py under `root`."""
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*.py"))
            if "__pycache__" not in p.parts}


def _as_files(modules: Mapping[str, Path] | Path) -> Mapping[str, Path]:
    return tree_files(modules) if isinstance(modules, Path) else modules


def imported_names(source: bytes, rel: str) -> set[str]:
    """Dotted names of the modules `rel` (a board path) imports, anywhere in it (the
    firmware imports lazily); relative imports resolved against its package."""
    tree = ast.parse(source, rel)
    package = rel.split("/")[:-1]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 > len(package):
                    continue
                base = package[:len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module:
                names.add(module)
            names.update(f"{module}.{a.name}" if module else a.name for a in node.names)
    return names


def module_paths(name: str) -> list[str]:
    """The board paths that importing `name` may run: a.b.c runs a and a.b first."""
    parts = name.split(".")
    out = []
    for n in range(1, len(parts) + 1):
        stem = "/".join(parts[:n])
        out += [stem + ".py", stem + "/__init__.py"]
    return out


def reach(start: list[str], read: Callable[[str], bytes | None], cut: set[str] = frozenset()) -> set[str]:
    """Board paths reachable from `start` by imports; `read(path)` gives a module's source,
    or None where there is no such module."""
    todo, seen = list(start), set()
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        source = read(rel)
        if source is None:
            continue
        seen.add(rel)
        for name in imported_names(source, rel):
            todo.extend(p for p in module_paths(name) if p not in cut and p not in seen)
    return seen


def device_modules(modules: Mapping[str, Path] | Path, kind: str | Iterable[str], host_board: bool) -> set[str]:
    """Board paths (.py) of the modules this device's bundle holds; `kind` may be several (a
    device on several clouds: each adapter)."""
    files = _as_files(modules)
    optional = {p for p in files if p.startswith("uplink/platforms/") and p.count("/") == 2
                and p.rsplit("/", 1)[1][:-3] in _kinds()}
    optional.add(HOST_BACKEND)
    kinds = [kind] if isinstance(kind, str) else list(kind)
    wanted = {adapter(k) for k in kinds} | ({HOST_BACKEND} if host_board else set())
    start = [r for r in ENTRY if r in files] + [w for w in wanted if w in files]
    return reach(start, lambda r: files[r].read_bytes() if r in files else None, optional - wanted)


def _kinds() -> set[str]:
    from host_tools.fleet import KINDS

    return set(KINDS)


def select(build_files: dict[str, Path], modules: set[str]) -> dict[str, Path]:
    """The build's files (board path -> file) that come from `modules` (.py sources)."""
    keep = {m[:-3] for m in modules}
    return {p: f for p, f in build_files.items() if p.rsplit(".", 1)[0] in keep}
