"""`uplink flash-micropython`: erase the chip and write a MicroPython image. The only module
that runs esptool.

The image goes at the board profile's `flash_offset` (0x1000 on the original ESP32, 0x0 on
the S3 and C3). Each esptool step is tried at 460800 baud first and again at 115200 when
that fails (long or poor USB cables, some USB-serial chips).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from host_tools.errors import UplinkError

FAST, SAFE = 460800, 115200


class FlashError(UplinkError):
    pass


# esptool's "Firmware Image Format": byte 0 is the magic 0xE9; on the ESP32 family a 16-byte
# extended header follows the 8-byte common one, with the chip id (uint16 LE) at its bytes 4-5.
ESP_IMAGE_MAGIC = 0xE9
CHIP_ID_OFFSET = 8 + 4


def check_image(profile: dict, image: Path) -> None:
    """Refuse what is not a firmware image for this board's chip, before anything is erased.
    MicroPython's .bin begins with the second-stage bootloader, an image of that format."""
    from esptool.targets import CHIP_DEFS

    if not image.is_file():
        raise FlashError(f"no image file {image}: download one from https://micropython.org/download/")
    with image.open("rb") as f:
        head = f.read(CHIP_ID_OFFSET + 2)
    chip = profile.get("esptool_chip") or ""
    if len(head) < CHIP_ID_OFFSET + 2 or head[0] != ESP_IMAGE_MAGIC:
        raise FlashError(f"{image} is not an ESP32 firmware image (it does not start with the "
                         f"image magic 0xE9): download the .bin for {profile.get('chip')} from "
                         "https://micropython.org/download/")
    got = int.from_bytes(head[CHIP_ID_OFFSET:CHIP_ID_OFFSET + 2], "little")
    want = getattr(CHIP_DEFS.get(chip), "IMAGE_CHIP_ID", None)
    if want is not None and got != want:
        names = {getattr(d, "IMAGE_CHIP_ID", None): d.CHIP_NAME for d in CHIP_DEFS.values()}
        raise FlashError(f"{image} is built for {names.get(got, f'chip id {got}')}, but board "
                         f"'{profile.get('id')}' is {profile.get('chip')}: download the "
                         f"{profile.get('chip')} image (or pass --board)")
    _check_version(profile, image)


def _check_version(profile: dict, image: Path) -> None:
    """An image whose MicroPython cannot run Uplink is refused before anything is erased."""
    from host_tools import micropython_version as mv

    got = mv.image_version(image)
    fix = f"download {mv.image_name(profile) or 'a newer image'} from {mv.download_page(profile)}"
    if got is None:
        raise FlashError(f"{image} holds no MicroPython banner ('MicroPython v1.x'): is it a MicroPython "
                         f"image? {fix}")
    if got < mv.MINIMUM:
        raise FlashError(f"{image} holds MicroPython {mv.text(got)}; Uplink needs {mv.text(mv.MINIMUM)} "
                         f"or later: {fix}")


def esptool_args(chip: str, port: str, baud: int, *step: str) -> list[str]:
    return [sys.executable, "-m", "esptool", "--chip", chip, "--port", port, "--baud", str(baud), *step]


def steps(profile: dict, image: Path, *, erase: bool = True) -> list[list[str]]:
    """The esptool sub-commands, without chip/port/baud."""
    offset = profile.get("flash_offset")
    if not profile.get("esptool_chip") or offset is None:
        raise FlashError(
            f"board '{profile.get('id')}' has no flash to write (the host board runs MicroPython's "
            "unix port: `uplink sim`)"
        )
    out = []
    if erase:
        out.append(["erase-flash"])
    out.append(["write-flash", "-z", str(offset), str(image)])
    return out


def plan(profile: dict, port: str, image: Path, baud: int = FAST, *, erase: bool = True) -> list[list[str]]:
    return [esptool_args(profile["esptool_chip"], port, baud, *s) for s in steps(profile, image, erase=erase)]


Runner = Callable[[list[str]], int]


def _run(cmd: list[str]) -> int:
    return subprocess.run(cmd).returncode


def flash(profile: dict, port: str, image: Path, *, erase: bool = True, run: Runner = _run,
          log: Callable[[str], None] = print) -> list[list[str]]:
    """Run each step, falling back from 460800 to 115200 baud; returns the commands run."""
    check_image(profile, image)
    done: list[list[str]] = []
    chip = profile.get("esptool_chip")
    for step in steps(profile, image, erase=erase):
        for baud in (FAST, SAFE):
            cmd = esptool_args(chip or "", port, baud, *step)
            done.append(cmd)
            if run(cmd) == 0:
                break
            if baud == FAST:
                log(f"esptool {step[0]} failed at {FAST} baud; retrying at {SAFE}")
        else:
            raise FlashError(
                f"esptool {step[0]} failed at {FAST} and {SAFE} baud. Hold the board's BOOT button "
                "while it connects, check the cable, and that no other program has the port open"
            )
    return done
