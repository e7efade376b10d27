"""Which MicroPython a board must run: the minimum version, whether the board loads the .mpy
files our build makes, and the micropython.org image that fixes it.

The minimum is what the firmware uses: `ssl.SSLContext.load_verify_locations(cadata=)`
(uplink/transport.py) arrived in MicroPython v1.22.0 (extmod/modssl_mbedtls.c); v1.21 has
no way to give a CA. .mpy files: py/persistentcode.c loads a file whose version byte equals
the board's (sys.implementation._mpy & 0xff); the sub-version and the architecture must also
match only when the file carries native code (an architecture in its header).
"""

from __future__ import annotations

import re
from pathlib import Path

MINIMUM = (1, 22, 0)
# micropython.org's current release and the date in its file names
# (https://micropython.org/resources/firmware/ESP32_GENERIC-20260824-v1.29.0.bin)
RELEASE, RELEASE_DATE = (1, 29, 0), "20260824"


def text(version: tuple[int, ...]) -> str:
    return "v" + ".".join(str(n) for n in version)


def image_name(profile: dict) -> str | None:
    """The micropython.org file to flash on this board, as micropython.org names it."""
    board = profile.get("micropython_image")
    return f"{board}-{RELEASE_DATE}-{text(RELEASE)}.bin" if board else None


def download_page(profile: dict) -> str:
    board = profile.get("micropython_image")
    return f"https://micropython.org/download/{board}/" if board else "https://micropython.org/download/"


def _mpy(sys_mpy: int) -> str:
    return f"{sys_mpy & 0xFF}.{(sys_mpy >> 8) & 3}"


def board_problem(version: tuple[int, ...], sys_mpy: int | None, mpy_header: bytes | None) -> str | None:
    """Why a board with this MicroPython cannot run our build (None: it can)."""
    have = f"the board runs MicroPython {text(version)}"
    if sys_mpy is None:
        return f"{have}, built without .mpy loading (no sys.implementation._mpy)"
    have += f" (.mpy v{_mpy(sys_mpy)})"
    if mpy_header and len(mpy_header) >= 3 and mpy_header[:1] == b"M":
        if mpy_header[1] != sys_mpy & 0xFF:
            return f"{have}, and our build is .mpy v{mpy_header[1]}: it cannot load it"
        arch = mpy_header[2] >> 2 & 0xF
        if arch and (mpy_header[2] & 3 != (sys_mpy >> 8) & 3 or arch != (sys_mpy >> 10) & 0xF):
            return f"{have}: it cannot load our build's native code"
    if tuple(version) < MINIMUM:
        return f"{have}; Uplink needs {text(MINIMUM)} or later"
    return None


def flash_hint(profile: dict) -> str:
    image = image_name(profile)
    if not image:
        return "run a newer MicroPython"
    return (f"flash {image} from {download_page(profile)} with `uplink flash-micropython --image {image}`, "
            "then deploy again")


_BANNER = re.compile(rb"MicroPython v(\d+)\.(\d+)(?:\.(\d+))?")
_NAME = re.compile(r"-v(\d+)\.(\d+)(?:\.(\d+))?")


def image_version(image: Path) -> tuple[int, ...] | None:
    """The MicroPython version an image holds: its banner string ("MicroPython v1.29.0 on
    2026-08-24", py/mpconfig.h MICROPY_BANNER_NAME_AND_VERSION), else its file name."""
    m = _BANNER.search(image.read_bytes())
    if m is None:
        n = _NAME.search(image.name)
        if n is None:
            return None
        return tuple(int(g or 0) for g in n.groups())
    return tuple(int(g or 0) for g in m.groups())
