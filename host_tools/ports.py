"""Serial ports: listing them (`uplink devices`), picking the board's, reading its console
(`uplink logs`). Uses pyserial."""

from __future__ import annotations

import codecs
import sys
import time
from collections.abc import Callable

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


def follow(port: str, write: Callable[[str], None], *, baud: int = 115200,
           seconds: float | None = None) -> None:
    """Print the board's console until Ctrl-C (or `seconds`)."""
    import serial

    from host_tools.board_link import explain_open_error

    s = serial.Serial()
    s.port, s.baudrate, s.timeout, s.exclusive = port, baud, 0.2, True
    # DTR/RTS released: on ESP32 boards they drive EN and GPIO0 (auto-reset into the
    # bootloader); asserted, opening the console would hold the chip in reset
    s.dtr = False
    s.rts = False
    try:
        s.open()
    except (serial.SerialException, OSError) as e:
        raise explain_open_error(port, e) from None
    end = None if seconds is None else time.monotonic() + seconds
    text = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character split between reads stays whole
    try:
        while end is None or time.monotonic() < end:
            data = s.read(4096)
            if data:
                write(text.decode(data).replace("\r\n", "\n"))
    finally:
        s.close()
