"""The firmware frozen into a MicroPython image (`device.frozen`, `uplink build --freeze`): the
uplink/ package's sources and a manifest that the port's build freezes (FROZEN_MANIFEST), so
its bytecode, its names (qstrs) and its constants stay in flash, where a `.mpy` on the
filesystem or in ROMFS still costs heap for each (docs/hardware.md, "Firmware frozen into the
image"). The package carries its build id (uplink/_frozen.py), which `uplink deploy` reads
back from the board: a deploy never runs on an image that froze another build.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from host_tools.board_link import BoardError, BoardLink

PACKAGE = "uplink"
ID_MODULE = "_frozen.py"
HINT = ("build a MicroPython image with it (`uplink build --freeze DIR`, then the port's make with "
        "FROZEN_MANIFEST=DIR/manifest.py: `uplink docs hardware`, \"Firmware frozen into the image\") and "
        "flash it, or set device.frozen = false")
MANIFEST = """\
# uplink build --freeze: the firmware's uplink/ package frozen into a MicroPython image.
# Build the port with FROZEN_MANIFEST=<this file>; the port's own frozen modules stay.
include("$(PORT_DIR)/boards/manifest.py")
package("uplink", base_path={base!r})
"""


def package(files: dict[str, Path]) -> dict[str, bytes]:
    """The uplink/ package's sources among a build's `files` (board path -> local file)."""
    return {rel: p.read_bytes() for rel, p in sorted(files.items())
            if rel.split("/")[0] == PACKAGE and rel.endswith(".py") and not rel.endswith("/" + ID_MODULE)}


def build_id(pkg: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for rel in sorted(pkg):
        h.update(rel.encode() + b"\0" + pkg[rel] + b"\0")
    return h.hexdigest()


def write(out: Path, pkg: dict[str, bytes]) -> str:
    """out/manifest.py and out/uplink/ (the sources, and _frozen.py with the build id);
    returns the build id."""
    bid = build_id(pkg)
    shutil.rmtree(out / PACKAGE, ignore_errors=True)
    for rel, data in pkg.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    (out / PACKAGE / ID_MODULE).write_text(f'# uplink build --freeze\nBUILD = "{bid}"\n')
    (out / "manifest.py").write_text(MANIFEST.format(base=str(out.resolve())))
    return bid


# the package found anywhere but the filesystem's root (where deploy copies): on an ESP32,
# the image's frozen modules (.frozen)
_BOARD_BUILD = """\
import sys
def _fz():
 p=sys.path[:]
 sys.path[:]=[e for e in p if e not in ('','/','.')]
 def drop():
  for k in [k for k in sys.modules if k=='uplink' or k.startswith('uplink.')]:
   del sys.modules[k]
 drop()
 try:
  from uplink import _frozen
  return _frozen.BUILD
 except ImportError:
  return None
 finally:
  sys.path[:]=p
  drop()
print(repr(_fz()))
"""


def board_build(link: BoardLink) -> str | None:
    """The build id of the uplink/ package frozen into the board's image; None without one."""
    import ast

    return ast.literal_eval(link.exec(_BOARD_BUILD).decode().strip())


def check(link: BoardLink, pkg: dict[str, bytes]) -> None:
    """A BoardError naming the fix unless the board's image froze this very package."""
    got = board_build(link)
    if got is None:
        raise BoardError(f"device.frozen is set but the board's MicroPython image has no frozen uplink package: {HINT}")
    want = build_id(pkg)
    if got != want:
        raise BoardError(f"the board's MicroPython image froze another build of the firmware (build {got[:12]}, "
                         f"this one is {want[:12]}): rebuild the image from `uplink build --freeze` and flash it "
                         "(`uplink docs hardware`, \"Firmware frozen into the image\")")
