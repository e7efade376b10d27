"""`uplink` with a serial-port list of the test's making: `python -m tests.host.fake_ports ARGS`
runs the command as `python -m host_tools ARGS` does, with host_tools.ports.comports replaced.

UPLINK_TEST_PORTS names JSON files (os.pathsep between them), each a list of ports as
pyserial's list_ports describes them ({"device", "vid", "pid", "serial_number", "product"}).
They are read at every listing, so a board that leaves and comes back under another name
(a virtual board re-enumerating) is seen as the machine would see it."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

from host_tools import ports


def comports() -> list:
    out = []
    for name in filter(None, os.environ.get("UPLINK_TEST_PORTS", "").split(os.pathsep)):
        try:
            rows = json.loads(open(name).read() or "[]")
        except FileNotFoundError:
            rows = []
        for r in rows:
            out.append(SimpleNamespace(**{"vid": None, "pid": None, "serial_number": None, "product": None,
                                          "description": "n/a", **r}))
    return out


def write(path, rows: list[dict]) -> None:
    """Replace a port list in one step (a reader never sees half of it)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(rows, f)
    os.replace(tmp, path)


if __name__ == "__main__":
    ports.comports = comports
    from host_tools.cli import main

    main()
