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

FAST, SAFE = 460800, 115200


class FlashError(Exception):
    pass


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
    if not image.is_file():
        raise FlashError(f"no image file {image}: download one from https://micropython.org/download/")
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
