"""One serial port, several `uplink` commands: `uplink logs` lends the port it holds to a
`deploy`, `run`, `repl` or `flash-micropython` started in another terminal, and takes it back
when that command ends.

`logs` listens on a unix socket named after its port, in a private runtime directory
($XDG_RUNTIME_DIR/uplink, else /tmp/uplink-UID; 0700). A command that needs the port connects
and sends `borrow WHO`; logs closes the port and answers `lent`. The port is the borrower's
while that connection is open: its end (the command exits, fails or is killed, and the
kernel closes the socket) gives the port back, and logs opens it again.
"""

from __future__ import annotations

import os
import re
import select
import socket
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from host_tools.board_link import BoardError

REPLY_TIMEOUT = 5.0  # s for a running logs to let go of the port


def runtime_dir() -> Path:
    """Ours alone: a directory another user made (in /tmp) or can write to is refused."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    d = Path(base) / "uplink" if base else Path(tempfile.gettempdir()) / f"uplink-{os.getuid()}"
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = d.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise OSError(f"{d} is not a private directory of this user")
    return d


def socket_path(port: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9]+", "_", os.path.realpath(port)).strip("_")
    return runtime_dir() / f"{name}.sock"


_borrowed: set[str] = set()  # ports this process holds from a logs (run's deploy inside run)


@contextmanager
def borrowed(port: str, who: str) -> Iterator[bool]:
    """Hold `port` for the block, taken from an `uplink logs` that has it open; True when one
    did (its console goes on once the block ends), False when none runs."""
    key = os.path.realpath(port)
    if key in _borrowed:
        yield True
        return
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.settimeout(REPLY_TIMEOUT)
    try:
        c.connect(str(socket_path(port)))
    except OSError:  # no logs on this port (or one that has ended)
        c.close()
        yield False
        return
    try:
        try:
            c.sendall(f"borrow {who}\n".encode())
            reply = c.recv(64)
        except OSError:
            reply = b""
        if reply != b"lent\n":
            raise BoardError(f"`uplink logs` holds {port} and did not let go of it: stop it (Ctrl-C) and retry")
        _borrowed.add(key)
        try:
            yield True
        finally:
            _borrowed.discard(key)
    finally:
        c.close()


class Lender:
    """`uplink logs`' side: who asks for the port, and the wait until they give it back."""

    def __init__(self, port: str):
        self.sock: socket.socket | None = None
        self.path: Path | None = None
        self.port = port
        self.problem = ""  # why the port cannot be lent (the console works without)
        self.move(port)

    def move(self, port: str) -> None:
        """Listen under the port's name (again, when the board came back under another)."""
        self.close()
        self.port = port
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            path = socket_path(port)
            path.unlink(missing_ok=True)  # left by a logs that was killed
            s.bind(str(path))
            s.listen(4)
        except OSError as e:
            s.close()
            self.problem = str(e)
            return
        self.sock, self.path, self.problem = s, path, ""

    def asked(self) -> tuple[socket.socket, str] | None:
        """A borrower waiting for the port, and its name (without blocking)."""
        if self.sock is None or not select.select([self.sock], [], [], 0)[0]:
            return None
        conn, _ = self.sock.accept()
        conn.settimeout(2.0)
        try:
            line = conn.recv(256).decode(errors="replace").strip()
        except OSError:
            line = ""
        if not line.startswith("borrow "):
            conn.close()
            return None
        return conn, line[len("borrow "):]

    @staticmethod
    def lend(conn: socket.socket) -> None:
        """Tell the borrower the port is free (the caller has closed it), then wait until the
        borrower's connection ends."""
        conn.settimeout(None)
        try:
            conn.sendall(b"lent\n")
            while conn.recv(64):
                pass
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None
