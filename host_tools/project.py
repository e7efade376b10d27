"""A user's project, and where the installed package keeps the firmware.

A project is the directory that holds the fleet file (`uplink init` makes one). Its
`user.py` replaces the firmware's example, and the modules user.py imports that sit in the
project go to the board with it: `helpers.py` beside user.py for `import helpers`, a
directory with an `__init__.py` for a package (`from sensors import bme280` takes
`sensors/__init__.py` and `sensors/bme280.py`), and so on for what those import. Only
modules reached by import statements go (as in host_tools.bundle), so scripts, tests and
virtualenvs beside them stay home; a module imported by a computed name (`__import__(x)`)
is not seen. A project without user.py builds the firmware's example.

The firmware (`uplink/`, `boot.py`, `main.py`, the example `user.py`) and the board
profiles come from the installed package: pyproject.toml maps firmware/ and boards/ of this
repository into the wheel as host_tools/firmware and host_tools/boards. In a checkout (and
an editable install) they are read where they are. UPLINK_FIRMWARE_DIR names another
firmware tree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from host_tools.errors import UplinkError

PACKAGE = Path(__file__).resolve().parent
REPO = PACKAGE.parent
TEMPLATES = PACKAGE / "templates"
USER = "user.py"


def shipped(name: str) -> Path:
    """firmware/ or boards/: inside the installed package, else at the top of the checkout."""
    inside = PACKAGE / name
    return inside if inside.is_dir() else REPO / name


def firmware_dir() -> Path:
    """The firmware tree to build: the installed package's, or $UPLINK_FIRMWARE_DIR."""
    env = os.environ.get("UPLINK_FIRMWARE_DIR")
    return Path(env) if env else shipped("firmware")


class ProjectError(UplinkError):
    """`uplink init` cannot write the project."""


@dataclass
class Sources:
    """What a build compiles: board path (.py) -> source file."""

    files: dict[str, Path]
    firmware: Path
    project: Path | None = None  # the project whose user.py (and modules) are in `files`
    own: set[str] = field(default_factory=set)  # board paths that come from the project

    def shown(self, rel: str) -> str:
        """How a person finds the file: `firmware/uplink/app.py`, or the project's file as a
        path from the current directory."""
        if rel not in self.own:
            return f"firmware/{rel}"
        return _near(self.files[rel])


def sources(project: Path | None = None, firmware: Path | None = None) -> Sources:
    """The firmware's modules, with the project's user.py and the modules it imports from
    the project in place of the example."""
    from host_tools.build import BuildError  # exit code 6, as mpy-cross's own complaints
    from host_tools.bundle import reach, tree_files

    fw = firmware or firmware_dir()
    files = tree_files(fw)
    if project is None or not (project / USER).is_file():
        return Sources(files, fw)
    project = project.resolve()

    def read(rel: str) -> bytes | None:
        path = project / rel
        return path.read_bytes() if path.is_file() else None

    try:
        own = reach([USER], read)
    except SyntaxError as e:
        where = f"{_near(project / (e.filename or USER))}:{e.lineno}"
        raise BuildError(f"{where}: SyntaxError: {e.msg}", file=str(project / (e.filename or USER)),
                         line=e.lineno) from None
    firmware_tops = {rel.split("/")[0].removesuffix(".py") for rel in files} - {"user"}
    for rel in sorted(own):
        top = rel.split("/")[0].removesuffix(".py")
        if top in firmware_tops:
            raise BuildError(
                f"{_near(project / rel)}: your project has a module '{top}', as the firmware does: "
                f"on the board one would replace the other (rename yours, and its imports)")
    for rel in own:
        files[rel] = project / rel
    return Sources(files, fw, project, own)


def _near(path: Path) -> str:
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(path)


def stage(src: Sources, out: Path) -> Path:
    """The sources as one tree (the host board's flash for `uplink sim --source`): copied,
    unchanged files left alone, files no longer in it removed."""
    out.mkdir(parents=True, exist_ok=True)
    for rel, path in src.files.items():
        target = out / rel
        data = path.read_bytes()
        if not target.is_file() or target.read_bytes() != data:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    for f in sorted(out.rglob("*")):
        if f.is_file() and f.relative_to(out).as_posix() not in src.files:
            f.unlink()
    return out


# -- uplink init ---------------------------------------------------------------------------------
def init_files() -> dict[str, bytes]:
    """What `uplink init` writes: name in the project -> content."""
    header = (TEMPLATES / "user_header.txt").read_bytes()
    example = (shipped("firmware") / USER).read_bytes()
    return {
        "fleet.toml": (TEMPLATES / "fleet.toml").read_bytes(),
        USER: header + example,
        ".gitignore": (TEMPLATES / "gitignore").read_bytes(),
    }


def init(directory: Path, force: bool = False) -> list[Path]:
    """Write a new project into `directory` (made if missing). Nothing is written when one
    of its files exists, unless `force`."""
    files = init_files()
    if directory.exists() and not directory.is_dir():
        raise ProjectError(f"{_near(directory)} is a file: give a directory for the project")
    if not force:
        there = [directory / name for name in files if (directory / name).exists()]
        if there:
            names = [_near(p) for p in there]
            listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
            raise ProjectError(f"{listed} already exist{'s' if len(names) == 1 else ''}: nothing "
                               f"written (pass --force to overwrite {'it' if len(names) == 1 else 'them'})")
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in files.items():
        path = directory / name
        if path.is_dir():
            raise ProjectError(f"{_near(path)} is a directory: not overwritten")
        path.write_bytes(data)
        written.append(path)
    return written

