"""`private_dir(path)`: a folder only its owner can use, whatever the umask.

`Path.mkdir(parents=True, mode=0o700)` applies the mode to the last folder only and the umask
to every one, so under `umask 000` the parents it makes are world-writable (anyone could swap
the relay's key or a device's config.json). Here every folder this call creates is 0700 from
the moment it exists, and the target itself is set to 0700. Folders that were there already,
above the target, are left alone: they are the user's.

`private_file(path)`: write a file whole or not at all, 0600 from its first byte, in a
private_dir.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator


def private_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    missing: list[Path] = []
    q = p
    while not q.exists():
        missing.append(q)
        if q.parent == q:
            break
        q = q.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)  # the umask can only take bits away from 0700
        except FileExistsError:
            pass  # made meanwhile by someone else: the chmod below still applies to ours
        os.chmod(d, 0o700)  # and a umask such as 0200 must not leave it unusable to us
    if not missing and p.is_dir() and p.stat().st_uid == os.getuid():
        os.chmod(p, 0o700)
    return p


@contextlib.contextmanager
def private_file(path: str | os.PathLike, mode: int = 0o600) -> Iterator[BinaryIO]:
    """Write `path` through a temporary file beside it, renamed over it at the end: readers see
    the old file or the new one, never half, and nobody else can swap either under any umask."""
    p = Path(path)
    private_dir(p.parent)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=p.parent)  # 0600 whatever the umask
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
