"""Where each key of a TOML document is written: key path -> line number, so a fleet file
mistake can be reported as `fleet.toml:12: ...` like a compiler's. tomllib parses but keeps
no positions; this scanner only finds keys (the document is known to parse)."""

from __future__ import annotations

import re

Path = tuple  # of str (keys) and int (list / array-of-tables indexes)
_BARE = re.compile(r"[A-Za-z0-9_-]+")


class _Scan:
    def __init__(self, text: str):
        self.s = text
        self.i = 0
        self.line = 1
        self.lines: dict[Path, int] = {}

    # -- characters --------------------------------------------------------------------
    def peek(self, n: int = 1) -> str:
        return self.s[self.i:self.i + n]

    def advance(self, n: int = 1) -> None:
        self.line += self.s.count("\n", self.i, self.i + n)
        self.i += n

    def skip(self, newlines: bool) -> None:
        """Whitespace and comments (and newlines, where the grammar allows them)."""
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t\r" or (newlines and c == "\n"):
                self.advance()
            elif c == "#":
                while self.i < len(self.s) and self.s[self.i] != "\n":
                    self.i += 1
            else:
                return

    def note(self, path: Path) -> None:
        self.lines.setdefault(path, self.line)

    # -- grammar -------------------------------------------------------------------------
    def string(self) -> str:
        for q in ('"""', "'''", '"', "'"):
            if self.peek(len(q)) == q:
                break
        self.advance(len(q))
        start = self.i
        while self.i < len(self.s) and self.peek(len(q)) != q:
            self.advance(2 if q[0] == '"' and self.peek() == "\\" else 1)
        out = self.s[start:self.i]
        self.advance(len(q))
        return out

    def key(self) -> Path:
        parts = []
        while True:
            self.skip(False)
            if self.peek() in ('"', "'"):
                parts.append(self.string())
            else:
                m = _BARE.match(self.s, self.i)
                if not m:
                    break
                parts.append(m.group())
                self.advance(m.end() - self.i)
            self.skip(False)
            if self.peek() != ".":
                break
            self.advance()
        return tuple(parts)

    def value(self, path: Path) -> None:
        self.skip(False)
        c = self.peek()
        if c == "{":
            self.advance()
            while self.i < len(self.s):
                self.skip(True)
                if self.peek() == "}":
                    break
                self.pair(path)
                self.skip(True)
                if self.peek() == ",":
                    self.advance()
            self.advance()
        elif c == "[":
            self.advance()
            n = 0
            while self.i < len(self.s):
                self.skip(True)
                if self.peek() == "]":
                    break
                self.note(path + (n,))
                self.value(path + (n,))
                self.skip(True)
                if self.peek() == ",":
                    self.advance()
                    n += 1
            self.advance()
        elif c in ('"', "'"):
            self.string()
        else:
            while self.i < len(self.s) and self.s[self.i] not in ",]}\n#":
                self.i += 1

    def pair(self, table: Path) -> None:
        k = self.key()
        full = table + k
        for n in range(len(table) + 1, len(full) + 1):
            self.note(full[:n])
        self.skip(False)
        if self.peek() == "=":
            self.advance()
        self.value(full)

    def document(self) -> dict[Path, int]:
        table: Path = ()
        arrays: dict[Path, int] = {}
        while True:
            self.skip(True)
            if self.i >= len(self.s):
                return self.lines
            if self.peek(2) == "[[" or self.peek() == "[":
                double = self.peek(2) == "[["
                self.advance(2 if double else 1)
                path = self.key()
                self.advance(2 if double else 1)
                for n in range(1, len(path) + 1):
                    self.note(path[:n])
                if double:
                    arrays[path] = arrays.get(path, -1) + 1
                    path = path + (arrays[path],)
                    self.note(path)
                table = path
            else:
                before = self.i
                self.pair(table)
                if self.i == before:  # not TOML after all: give up on positions
                    return self.lines


def key_lines(text: str) -> dict[Path, int]:
    return _Scan(text).document()


def line_of(lines: dict[Path, int], path: Path) -> int | None:
    """The line of `path`, or of the nearest enclosing key that is written (a missing key:
    its table's line)."""
    for n in range(len(path), 0, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return None


def parse_path(dotted: str) -> Path:
    """`wifi.networks[0].pasword` -> ('wifi', 'networks', 0, 'pasword')."""
    out: list = []
    for part in dotted.split("."):
        m = re.match(r"^(.*?)((\[\d+\])*)$", part)
        name, idx = (m.group(1), m.group(2)) if m else (part, "")
        if name:
            out.append(name)
        out.extend(int(i) for i in re.findall(r"\[(\d+)\]", idx))
    return tuple(out)
