"""`uplink docs [TOPIC]`: the documentation that comes with the installed uplink (docs/*.md,
shipped in the wheel as host_tools/docs), so a pip user reads what a message cites."""

from __future__ import annotations

import difflib
from pathlib import Path

from host_tools.errors import UsageError
from host_tools.project import shipped


def topics() -> dict[str, Path]:
    return {p.stem: p for p in sorted(shipped("docs").glob("*.md"))}


def title(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return ""


def find(topic: str) -> Path:
    all_ = topics()
    name = topic.lower().removesuffix(".md").removeprefix("docs/")
    if name in all_:
        return all_[name]
    near = difflib.get_close_matches(name, list(all_), n=1)
    hint = f"did you mean '{near[0]}'? " if near else ""
    raise UsageError(f"no document '{topic}': {hint}topics: {', '.join(all_)} (`uplink docs` lists them)")
