"""`private_dir(path)`: a folder only its owner can use, whatever the umask.

`Path.mkdir(parents=True, mode=0o700)` applies the mode to the last folder only and the umask
to every one, so under `umask 000` the parents it makes are world-writable (anyone could swap
the relay's key or a device's config.json). Here every folder this call creates is 0700 from
the moment it exists, and the target itself is set to 0700. Folders that were there already,
above the target, are left alone: they are the user's.
"""

from __future__ import annotations

import os
from pathlib import Path


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
