"""The board's serial console (`uplink logs`, and `uplink run` after its deploy): printed until
Ctrl-C, through the board's resets.

A chip on its own USB (ESP32-S3, C3) takes its port with it at every reset and may come back
as another /dev/ttyACMn: the console waits for the device with the same VID:PID and serial
number and goes on there. A port behind a USB-serial bridge stays; one without a USB identity
that goes away ends the console with the reason.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable

from host_tools import ports
from host_tools.board_link import BoardError, explain_open_error


def open_port(port: str, baud: int):
    import serial

    s = serial.Serial()
    s.port, s.baudrate, s.timeout, s.exclusive = port, baud, 0.2, True
    # DTR/RTS released: on ESP32 boards they drive EN and GPIO0 (auto-reset into the
    # bootloader); asserted, opening the console would hold the chip in reset
    s.dtr = False
    s.rts = False
    s.open()
    return s


class Console:
    def __init__(self, port: str, write: Callable[[str], None], *, baud: int = 115200,
                 info: Callable[[str], None] = lambda _m: None, usb: dict | None = None):
        self.port, self.write, self.baud, self.info = port, write, baud, info
        self.usb = usb if usb is not None else ports.usb_identity(port)
        self.s = None
        self.text = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a split character stays whole

    def open(self, *, wait: bool = False) -> bool:
        """Open the port (found again by USB identity); False while the board is away. The
        first open (wait=False) tells why it fails."""
        import serial

        port = ports.find_usb(self.usb) if self.usb else self.port
        if port is None:
            return False
        try:
            self.s = open_port(port, self.baud)
        except (serial.SerialException, OSError) as e:
            if wait:
                return False
            raise explain_open_error(port, e) from None
        if port != self.port:
            self.info(f"console of {port} (the board came back under another name)")
            self.port = port
        return True

    def close(self) -> None:
        if self.s is not None:
            try:
                self.s.close()
            except OSError:  # the port went away with the board
                pass
            self.s = None

    def pump(self) -> None:
        """One read (up to 0.2 s): print it; a port gone away is waited for."""
        import serial

        if self.s is None:
            if not self.open(wait=True):
                time.sleep(0.2)
            return
        try:
            data = self.s.read(4096)
        except (serial.SerialException, OSError) as e:
            self.close()
            if not self.usb:
                raise BoardError(f"lost the board on {self.port}: {e}") from None
            self.info(f"{self.port} went away (the board resets?): waiting for it")
            return
        if data:
            self.write(self.text.decode(data).replace("\r\n", "\n"))


def follow(port: str, write: Callable[[str], None], *, baud: int = 115200, seconds: float | None = None,
           info: Callable[[str], None] = lambda _m: None, usb: dict | None = None, returning: bool = False,
           lend: bool = False) -> None:
    """Print the board's console until Ctrl-C (or `seconds`). `returning`: the board was just
    reset (by a deploy): its port may not be back yet. `lend`: a deploy, run, repl or flash
    in another terminal may borrow the port meanwhile (host_tools/port_share.py)."""
    from host_tools.port_share import Lender

    c = Console(port, write, baud=baud, info=info, usb=usb)
    if not (returning and ports.leaves_at_reset(c.usb)):
        c.open()  # a port that cannot be opened is told now
    lender = Lender(c.port) if lend else None
    if lender and lender.problem:
        info(f"not lending {c.port} to deploy, run or repl ({lender.problem}): they will find it busy")
    end = None if seconds is None else time.monotonic() + seconds
    try:
        while end is None or time.monotonic() < end:
            asked = lender.asked() if lender else None
            if lender and asked:
                conn, who = asked
                c.close()
                info(f"-- {who} has {c.port}; the console goes on when it is done --")
                lender.lend(conn)
                info("-- console back --")
                continue
            c.pump()
            if lender and c.port != lender.port:
                lender.move(c.port)  # the board came back under another name
    finally:
        c.close()
        if lender:
            lender.close()
