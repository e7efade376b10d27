"""Console output for the `uplink` command (rich), with a last line of defence for secrets:
everything written to stdout/stderr goes through a filter that replaces every secret value
this process has handled with "***". Commands are built not to print secrets in the first
place; the filter catches what a message, a traceback or the board's console might leak."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

from rich.console import Console
from rich.file_proxy import FileProxy

MASK = "***"


def plural(n: int, word: str, many: str | None = None) -> str:
    """`1 file`, `3 files`: no "1 file(s)" in what a person reads."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


class Redactor:
    def __init__(self):
        self.sources: list[Callable[[], list[str]]] = []
        self.enabled = True

    def values(self) -> list[str]:
        vals: set[str] = set()
        for src in self.sources:
            vals.update(v for v in src() if v and len(v) >= 3)
        return sorted(vals, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        if not self.enabled:
            return text
        for v in self.values():
            if v in text:
                text = text.replace(v, MASK)
        return text


REDACT = Redactor()


class _Stream:
    """A text stream that looks up sys.stdout/sys.stderr at write time (so test runners that
    swap them still capture) and redacts on the way."""

    def __init__(self, name: str):
        self.name = name

    @property
    def _target(self):
        target = getattr(sys, self.name)
        # While a rich Live display (the deploy progress bar) runs on a terminal, sys.stdout
        # and sys.stderr are rich FileProxy objects that print through our Console, whose
        # file is this stream: writing into the proxy would feed the Console its own output
        # forever. A Console's file must be the real stream, so skip the proxies.
        while isinstance(target, FileProxy):
            target = target.rich_proxied_file
        return target

    def write(self, s: str) -> int:
        self._target.write(REDACT(s))
        return len(s)

    def flush(self) -> None:
        self._target.flush()

    def isatty(self) -> bool:
        try:
            return self._target.isatty()
        except (AttributeError, ValueError):
            return False

    def fileno(self) -> int:
        return self._target.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self._target, "encoding", "utf-8")


class Ui:
    def __init__(self):
        self.level = 0  # -1 quiet, 0 normal, 1+ verbose
        self.out = Console(file=_Stream("stdout"), highlight=False, soft_wrap=True)  # type: ignore[arg-type]
        self.err = Console(file=_Stream("stderr"), highlight=False, soft_wrap=True)  # type: ignore[arg-type]

    def info(self, msg: str) -> None:
        """Progress / what happened (hidden by -q)."""
        if self.level >= 0:
            self.err.print(msg, markup=False)

    def detail(self, msg: str) -> None:
        """Shown with -v only."""
        if self.level >= 1:
            self.err.print(msg, style="dim", markup=False)

    def warn(self, msg: str) -> None:
        self.err.print("[yellow]warning:[/yellow] ", end="", markup=True)
        self.err.print(msg, markup=False)

    def error(self, msg: str) -> None:
        self.err.print("[bold red]error:[/bold red] ", end="", markup=True)
        self.err.print(msg, markup=False)

    def data(self, obj) -> None:
        """Machine-readable output (--json) on stdout."""
        self.out.file.write(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
        self.out.file.flush()

    def text(self, s: str) -> None:
        self.out.file.write(s)
        self.out.file.flush()


UI = Ui()
