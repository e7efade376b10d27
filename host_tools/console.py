"""The board's console as `uplink sim`, `logs` and `run` print it. With -q the firmware's
per-message lines (level D: `read:` per reading, `pub:` per message of readings, `cmd:` per command; see
firmware/uplink/log.py) are left out, so what remains is warnings and state changes. On the
board itself `device.console = "info"` turns them off."""

from __future__ import annotations

import re
from collections.abc import Callable

# firmware/uplink/log.py _emit: "%6d %s %s: %s" (uptime, level letter, tag, message)
_HEAD = re.compile(r" *\d+ ([A-Z]) ")
_MAYBE = re.compile(r" *\d*( [A-Z]?)?")  # a line start that may still turn into _HEAD


class Quiet:
    """Passes console text through to `write`, less its D lines. Text comes in chunks that
    split lines anywhere; a line start is held only while it could still be a D line's."""

    def __init__(self, write: Callable[[str], None]):
        self.write = write
        self._start = ""  # the start of a line not decided yet
        self._keep: bool | None = None  # the line under way: passed (True), dropped, undecided

    def __call__(self, text: str) -> None:
        out = []
        for piece in re.split(r"(?<=\n)", text):
            if not piece:
                continue
            if self._keep is None:
                self._start += piece
                m = _HEAD.match(self._start)
                if m:
                    self._keep = m.group(1) != "D"
                elif piece.endswith("\n") or not _MAYBE.fullmatch(self._start):
                    self._keep = True  # not a log line (a traceback, the REPL): as it is
                if self._keep:
                    out.append(self._start)
                if self._keep is not None:
                    self._start = ""
            elif self._keep:
                out.append(piece)
            if piece.endswith("\n"):
                self._keep = None
        if out:
            self.write("".join(out))


def writer(write: Callable[[str], None], quiet: bool) -> Callable[[str], None]:
    return Quiet(write) if quiet else write
