"""`uplink repl`: mpremote's REPL on the board's port, kept through the board's resets.

mpremote's own session (its terminal handling, Ctrl-] to leave) runs in this process, so we
learn whether it ended because the person left or because the board went away: a chip on its
own USB (ESP32-S3, C3) takes its port with it when Ctrl-C resets it into the maintenance
hold, and the REPL then continues on the port it comes back on.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from host_tools import ports
from host_tools.board_link import BoardError, check_port, explain_open_error


def session(port: str) -> bool:
    """One mpremote REPL session; True when it ended because the board went away."""
    from mpremote.main import State, argparse_repl
    from mpremote.repl import do_repl
    from mpremote.transport import TransportError
    from mpremote.transport_serial import SerialTransport

    state = State()
    try:
        state.transport = SerialTransport(port, baudrate=115200)
    except TransportError as e:
        raise explain_open_error(port, e) from None
    try:
        return bool(do_repl(state, argparse_repl().parse_args([])))
    finally:
        try:
            state.transport.close()
        except OSError:  # the port went away with the board
            pass


def run(port: str, info: Callable[[str], None], *, usb: dict | None = None, timeout: float = 30.0) -> None:
    usb = usb if usb is not None else ports.usb_identity(port)
    while True:
        check_port(port)  # busy or no permission: told as for deploy
        info(f"REPL of {port} (mpremote): Ctrl-C stops the running app, Ctrl-] leaves")
        if not session(port):
            return
        if not ports.leaves_at_reset(usb):
            raise BoardError(f"lost the board on {port}: is it still plugged in?")
        info("the board reset and took its USB port along: back to the REPL when it returns")
        port = _wait_for(usb, timeout)  # type: ignore[arg-type]


def _wait_for(usb: dict, timeout: float) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        port = ports.find_usb(usb)
        if port:
            try:
                check_port(port)
                return port
            except BoardError:
                pass  # listed, not ready yet
        time.sleep(0.2)
    raise BoardError(f"the board (USB {usb['vid_pid']}, serial {usb['serial_number']}) did not come back "
                     f"within {timeout:.0f} s: `uplink devices` lists what is plugged in")
