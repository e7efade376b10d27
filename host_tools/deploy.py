"""`uplink deploy`: make the board's filesystem hold the firmware build plus the device bundle.

Only files whose sha256 differs from what the board holds are copied; every file is written
to a temporary name and renamed into place (config.json above all: a half-written config
would keep the board from starting). A manifest on the board (.uplink-manifest.json) lists
what the last deploy put there, so files that left the build are removed, and nothing else
on the board (the outbox, the user's own files) is touched.

With device.romfs the uplink/ package goes to the board's ROMFS partition as one image
(host_tools/romfs_deploy.py), written before the filesystem's files; the manifest then no
longer lists uplink/, so a copy of it left on the filesystem by an earlier deploy, which
would come first on sys.path, is removed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from host_tools.board_link import MANIFEST, BoardLink


@dataclass
class Plan:
    copy: list[tuple[str, int, str]] = field(default_factory=list)  # path, bytes, "new"|"changed"
    remove: list[str] = field(default_factory=list)
    same: list[str] = field(default_factory=list)

    @property
    def copy_bytes(self) -> int:
        return sum(n for _, n, _ in self.copy)

    def as_dict(self) -> dict:
        return {
            "copy": [{"path": p, "bytes": n, "why": w} for p, n, w in self.copy],
            "remove": self.remove,
            "unchanged": self.same,
            "copy_bytes": self.copy_bytes,
        }


def local_files(build_files: dict[str, Path], bundle_dir: Path) -> dict[str, bytes]:
    """Board path -> content: the firmware build, then the bundle (config.json etc.)."""
    out = {p: f.read_bytes() for p, f in sorted(build_files.items())}
    for f in sorted(bundle_dir.iterdir()):
        if f.is_file() and not f.name.startswith("."):
            out[f.name] = f.read_bytes()
    return out


def check_micropython(link: BoardLink, profile: dict, files: dict[str, bytes]) -> None:
    """Refuse, before anything is copied, a board whose MicroPython cannot run the build."""
    from host_tools import micropython_version as mv
    from host_tools.board_link import BoardError

    header = next((data[:4] for path, data in files.items() if path.endswith(".mpy")), None)
    problem = mv.board_problem(link.version, link.sys_mpy, header)
    if problem:
        raise BoardError(f"{problem}: {mv.flash_hint(profile)}")


def manifest(files: dict[str, bytes]) -> bytes:
    return json.dumps({"files": sorted(files)}, sort_keys=True).encode()


def plan(link: BoardLink, files: dict[str, bytes], rom: bytes | None = None) -> tuple[Plan, list[str]]:
    """`rom`: the ROMFS image (romfs_deploy.image) for a device.romfs board; it is planned as
    one entry, romfs_deploy.IMAGE, before the files."""
    p = Plan()
    if rom is not None:
        from host_tools import romfs_deploy

        st = romfs_deploy.state(link, rom)
        (p.same.append(romfs_deploy.IMAGE) if st == "same"
         else p.copy.append((romfs_deploy.IMAGE, len(rom), st)))
    # the board compares its files' sha256 with ours, the manifest's too: when that one is
    # the same, the board holds exactly this file list and nothing needs reading back
    state = link.survey({path: hashlib.sha256(data).digest() for path, data in files.items()}
                        | {MANIFEST: hashlib.sha256(manifest(files)).digest()})
    # config.json last: the firmware it configures is in place before the board can boot it
    order = sorted(files, key=lambda x: (x == "config.json", x))
    for path in order:
        if state[path] == "same":
            p.same.append(path)
        else:
            p.copy.append((path, len(files[path]), state[path]))
    previous: list[str] = []
    if state[MANIFEST] != "same":
        old = link.read(MANIFEST)
        if old:
            try:
                previous = list(json.loads(old).get("files", []))
            except (ValueError, AttributeError):
                previous = []
    p.remove = sorted(set(previous) - set(files))
    return p, sorted(files)


def execute(link: BoardLink, files: dict[str, bytes], p: Plan,
            progress: Callable[[str, int], None] | None = None, rom: bytes | None = None) -> None:
    """Copy and remove what the plan says, with the board in the maintenance hold (no app,
    no watchdog counting down while ~65 KB go over at 115200 baud)."""
    if not (p.copy or p.remove):
        return
    link.enter_hold()
    try:
        _apply(link, files, p, progress, rom)
    finally:
        link.leave_hold()


def _apply(link: BoardLink, files: dict[str, bytes], p: Plan,
           progress: Callable[[str, int], None] | None, rom: bytes | None = None) -> None:
    from host_tools import romfs_deploy

    if rom is not None and any(path == romfs_deploy.IMAGE for path, _, _ in p.copy):
        romfs_deploy.write(link, rom, (lambda n: progress(romfs_deploy.IMAGE, n)) if progress else None)
    dirs: set[str] = set()
    for path, _, _ in p.copy:
        if path == romfs_deploy.IMAGE:
            continue
        parent = PurePosixPath(path).parent
        while str(parent) not in (".", "/", ""):
            dirs.add(str(parent))
            parent = parent.parent
    link.mkdirs(sorted(dirs, key=lambda d: d.count("/")))
    link.write_files([(path, files[path]) for path, _, _ in p.copy if path != romfs_deploy.IMAGE], progress)
    for path in p.remove:
        link.remove(path)
    # a directory left empty goes too: MicroPython imports a bare directory as a package, so an
    # empty uplink/ would shadow the package in ROMFS or in the image (device.romfs, frozen)
    emptied = {str(a) for path in p.remove for a in PurePosixPath(path).parents if str(a) not in (".", "/", "")}
    if emptied - dirs:
        link.rmdirs(sorted(emptied - dirs, key=lambda d: -d.count("/")))
    # after the removals: a deploy cut short before them still lists what is left to remove
    link.write_atomic(MANIFEST, manifest(files))
