"""OTA through ThingsBoard over mqtts: a typical bundle, made by `uplink build --bundle` for a
ThingsBoard device on the host board, delivered to the firmware on the ESP32 model (128k heap)
by tests/integration/tb_ota_server.py through TLS mosquitto. The bytes on the wire are counted
at a TCP proxy between the board and the broker's mqtts listener (both directions, TLS records
included).

Prints: the bundle's bytes and files; chunks asked and answered; bytes on the wire from the
announce to UPDATING (download, verify, install); seconds from the announce to UPDATING and to
UPDATED (the reboot, the reconnect and the bundle's commit_after_s trial, 60 s by default).
Then the same delivery with a power cut (SIGKILL) the moment DOWNLOADED arrives, while the
board checks the download: the bytes on the wire to UPDATING over the bundle's size and over
the uncut delivery's (the whole part is resumed, not fetched again: at most 1.05x).

    make bench BENCH_ARGS="ota"          .venv/bin/python -m tests.bench ota
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.faultproxy import FaultProxy
from tests.integration.hostboard import HostBoard
from tests.integration.tb_ota_server import TbOta
from tests.integration.test_ota_tb import Supervised
from tests.services import Mosquitto

REPO = Path(__file__).resolve().parents[2]
FLEET = '[devices.bench-ota]\nboard = "host"\n[devices.bench-ota.platform]\nkind = "thingsboard"\ntoken = "secret:t"\n'


def build_bundle(root: Path, version: str) -> dict:
    """`uplink build --bundle` as a user runs it, in its own process."""
    (root / "fleet.toml").write_text(FLEET)
    env = {**os.environ, "PYTHONPATH": str(REPO), "UPLINK_NO_KEYRING": "1", "UPLINK_SECRET_T": "bench",
           "UPLINK_SECRETS_FILE": str(root / "secrets.json"), "UPLINK_BUILD_DIR": str(root / "build"),
           "UPLINK_STATE_DIR": str(root / "state")}
    r = subprocess.run([sys.executable, "-m", "host_tools", "-f", str(root / "fleet.toml"), "build", "--bundle",
                        "bench-ota", "--version", version, "--json"], env=env, capture_output=True, text=True,
                       timeout=300, cwd=root)
    if r.returncode:
        raise RuntimeError(f"uplink build --bundle failed: {r.stdout}{r.stderr}")
    return json.loads(r.stdout)


def deliver(root: Path, broker: Mosquitto, bundle: Path, info: dict, cut: bool) -> tuple:
    """One delivery to a fresh board: (bytes on the wire to UPDATING, chunks, seconds to
    UPDATING, seconds to UPDATED or None). `cut`: SIGKILL as DOWNLOADED arrives (verification)."""
    proxy = FaultProxy(broker.ports["mqtts"])
    (root / "board").mkdir()
    (root / "board" / "ca.der").write_bytes(broker.pki.ca_der.read_bytes())
    cfg = {"device": {"name": "bench-ota", "board": "host"}, "ntp": {"servers": []},
           "platform": {"kind": "thingsboard", "url": f"mqtts://localhost:{proxy.port}", "token": "bench",
                        "ca": "ca.der", "client_rpc": False},
           "telemetry": {"interval_s": 3600, "health": False}, "outbox": {"max_bytes": 100000}}
    board = HostBoard(root / "board", cfg)
    run = Supervised(board)
    tb = None
    try:
        board.wait_for_line("mqtt: connected", 60)
        time.sleep(1)  # the connect's own traffic (attributes, the fw_* request) is not the update's
        # ThingsBoard's side comes now: the device's fw_* request at connect found no package
        tb = TbOta(broker.ports["mqtt"], bundle, title=info["title"], version=info["version"])
        if cut:
            def power_cut(state: str) -> None:
                if state == "DOWNLOADED" and tb is not None and tb.on_state is not None:
                    tb.on_state = None
                    if board.proc is not None:
                        board.proc.kill()  # Supervised boots it again
            tb.on_state = power_cut
        b0, t0 = proxy.bytes, time.monotonic()
        tb.announce()
        tb.wait_state("UPDATING", 600, board.console)
        t_updating, b_updating, chunks = time.monotonic() - t0, proxy.bytes - b0, tb.chunks
        t_updated = None
        if not cut:
            tb.wait_state("UPDATED", 600, board.console)
            t_updated = time.monotonic() - t0
        elif run.boots < 1:
            raise RuntimeError("the power cut at DOWNLOADED did not happen")
    finally:
        run.stop()
        if tb is not None:
            tb.stop()
        proxy.close()
    return b_updating, chunks, t_updating, t_updated


def main(argv: list[str]) -> None:
    root = Path(tempfile.mkdtemp(prefix="uplink-bench-ota-"))
    info = build_bundle(root, "2.0.0")
    bundle = Path(info["bundle"])
    broker = Mosquitto(root / "broker").start()
    try:
        (root / "plain").mkdir()
        b_updating, chunks, t_updating, t_updated = deliver(root / "plain", broker, bundle, info, cut=False)
        (root / "cut").mkdir()
        b_cut, chunks_cut, _, _ = deliver(root / "cut", broker, bundle, info, cut=True)
    finally:
        broker.stop()
    size = info["size"]
    print(f"bundle: `uplink build --bundle` of a ThingsBoard device (board host), {info['files']} files, "
          f"{size:,} bytes")
    print(f"chunks: {chunks} asked and answered ({(size + 1023) // 1024} of 1 KB needed)")
    print(f"bytes on the wire (mqtts, both ways, announce -> UPDATING): {b_updating:,} "
          f"({b_updating / size:.2f}x the bundle)")
    print(f"seconds, announce -> UPDATING (download, verify, install): {t_updating:.1f}")
    print(f"seconds, announce -> UPDATED (+ reset, reconnect, 60 s trial before the commit): {t_updated:.1f}")
    print(f"power cut during verification (SIGKILL at DOWNLOADED), announce -> UPDATING: {b_cut:,} bytes on the "
          f"wire, {chunks_cut} chunks; {b_cut / size:.2f}x the bundle, {b_cut / b_updating:.2f}x the uncut "
          f"delivery (target: at most 1.05x)")


if __name__ == "__main__":
    main(sys.argv[1:])
