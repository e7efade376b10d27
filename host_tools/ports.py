"""Serial ports: listing them (`uplink devices`), picking the board's, knowing it again by its
USB identity after a reset. Uses pyserial."""

from __future__ import annotations

import os
import sys

# USB-serial bridges found on ESP32 boards, and Espressif's own USB
KNOWN_VIDS = {0x303A: "Espressif", 0x10C4: "Silicon Labs CP210x", 0x1A86: "WCH CH340/CH343",
              0x0403: "FTDI"}


def comports() -> list:
    """The machine's serial ports as pyserial describes them (tests/host/fake_ports.py puts
    a list of the test's making here)."""
    from serial.tools import list_ports as lp

    return list(lp.comports())


def list_ports() -> list[dict]:
    out = []
    for p in sorted(comports(), key=lambda p: p.device):
        out.append({
            "port": p.device,
            "serial_number": p.serial_number,
            "vid_pid": f"{p.vid:04x}:{p.pid:04x}" if p.vid is not None and p.pid is not None else None,
            "product": p.product or (KNOWN_VIDS.get(p.vid) if p.vid is not None else None) or p.description,
            "likely_board": p.vid in KNOWN_VIDS,
        })
    return out


# Espressif's own USB (the S3's and C3's USB-Serial-JTAG or TinyUSB CDC): the port belongs to
# the chip, so it leaves at every reset and may come back as another /dev/ttyACMn. A bridge
# chip (CP210x, CH34x, FTDI) keeps its port through the ESP32's resets.
NATIVE_USB_VID = "303a"


def usb_identity(port: str) -> dict | None:
    """The USB VID:PID and serial number of the device behind `port` (None: not USB, or a
    device without a serial number, which cannot be told apart from its twins)."""
    real = os.path.realpath(port)
    for p in list_ports():
        if (p["port"] == port or os.path.realpath(p["port"]) == real) and p["vid_pid"] and p["serial_number"]:
            return {"vid_pid": p["vid_pid"], "serial_number": p["serial_number"]}
    return None


def find_usb(identity: dict) -> str | None:
    """The port the device with this identity has now."""
    for p in list_ports():
        if p["vid_pid"] == identity["vid_pid"] and p["serial_number"] == identity["serial_number"]:
            return p["port"]
    return None


def leaves_at_reset(identity: dict | None) -> bool:
    return identity is not None and identity["vid_pid"].startswith(NATIVE_USB_VID + ":")


def _interactive() -> bool:
    return sys.stdin.isatty() and sys.stderr.isatty()


def pick_port() -> str:
    """The one port that looks like an ESP32 board; with several, the person picks one (at a
    terminal) or is told to pass --port; with none, what to do."""
    from host_tools.board_link import BoardError

    boards = [p for p in list_ports() if p["likely_board"]]
    if len(boards) == 1:
        return boards[0]["port"]
    if not boards:
        raise BoardError("no board found on USB: plug it in (a data cable, not a charge-only one) "
                         "or pass --port; `uplink devices` lists serial ports")
    if not _interactive():
        raise BoardError("several boards are plugged in (" + ", ".join(b["port"] for b in boards)
                         + "): pass --port")
    return _choose(boards)


def _choose(boards: list[dict]) -> str:
    import click

    from host_tools.ui import UI

    UI.info("several boards are plugged in:")
    for i, b in enumerate(boards, 1):
        UI.info(f"  {i}  {b['port']}  {b['product'] or ''}  {b['vid_pid'] or ''}"
                + (f"  serial {b['serial_number']}" if b["serial_number"] else ""))
    n = click.prompt(f"which one? [1-{len(boards)}]", type=click.IntRange(1, len(boards)), err=True,
                     prompt_suffix=" ")
    return boards[n - 1]["port"]
