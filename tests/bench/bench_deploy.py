"""`uplink deploy` over a serial line: bytes on the wire per byte of file, and wall time.

A virtual board (tests/virtual_board/) paced at 115200 baud (11520 bytes a second each way,
as a UART's 8N1) takes an ESP32 device's bundle (esp32-devkitc, ThingsBoard): a full first
deploy onto an empty board, then a deploy with nothing changed. Each `uplink deploy` runs as
its own process, so the wall time includes the command's start, the build cache check, the
reset into the maintenance hold, and everything on the wire. Run twice: on a board with the
`deflate` module (compressed transfer) and on one without (the base64 fallback: the way every
deploy went before compression).

    make bench BENCH_ARGS=deploy
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from tests.host.uplink_helpers import Env
from tests.virtual_board.launcher import VirtualBoard

BAUD = 115200
FLEET = """
[devices.pump]
board = "esp32-devkitc"
[devices.pump.platform]
kind = "thingsboard"
url = "mqtts://mqtt.thingsboard.cloud:8883"
token = "secret:pump_token"
"""


def _deploy(env: Env, vb: VirtualBoard) -> tuple[dict, int, float]:
    vb.reset_counters()
    t0 = time.monotonic()
    r = env.run_process("deploy", "pump", "--port", vb.port, "--json")
    took = time.monotonic() - t0
    if r.code != 0:
        raise RuntimeError(f"deploy failed ({r.code}): {r.stderr[-2000:]}")
    return json.loads(r.stdout), vb.wire_bytes, took


def run(tmp: Path, deflate: bool) -> dict:
    env = Env(tmp / "fleet", FLEET)
    env.env["UPLINK_SECRET_PUMP_TOKEN"] = "bench-token"
    with VirtualBoard(tmp / "board", baud=BAUD, deflate=deflate) as vb:
        first, wire, t_full = _deploy(env, vb)
        again, wire2, t_same = _deploy(env, vb)
    if again["copy"] or again["remove"]:
        raise RuntimeError(f"second deploy changed something: {again}")
    return {"files": len(first["copy"]), "bytes": first["copy_bytes"], "wire": wire,
            "t_full": t_full, "wire_same": wire2, "t_same": t_same}


def main(argv: list[str]) -> None:
    print(f"ESP32 bundle (esp32-devkitc, thingsboard) onto an empty virtual board at {BAUD} baud")
    print(f"{'board':22} {'files':>5} {'file B':>7} {'wire B':>7} {'B/B':>5} {'full s':>7} "
          f"{'no-change wire B':>16} {'no-change s':>11}")
    for deflate, label in ((True, "deflate (compressed)"), (False, "no deflate (base64)")):
        with tempfile.TemporaryDirectory(prefix="uplink-bench-deploy-") as d:
            r = run(Path(d), deflate)
        print(f"{label:22} {r['files']:5} {r['bytes']:7} {r['wire']:7} {r['wire'] / r['bytes']:5.2f} "
              f"{r['t_full']:7.2f} {r['wire_same']:16} {r['t_same']:11.2f}", flush=True)
