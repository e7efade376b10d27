"""`make soak`: the whole firmware on the host board for hours, with periodic faults.

    python -m tests.soak                      # 2 hours
    python -m tests.soak --minutes 30 --report-min 5
    make soak SOAK_ARGS="--minutes 30"

Set-up: mosquitto (persistence on) <- fault proxy <- the firmware (.mpy, ThingsBoard profile,
a reading every --interval-ms, health on so every reading carries `gc_free`; heap 256 KB:
the 64-bit unix port's objects are about twice an ESP32's, and at 128k the app runs short).
The observer is a paho subscriber with a persistent session
connected straight to the broker. Every --fault-s seconds one fault, chosen at random
(seeded): a cut of every connection, a cut in the middle of a chunk, a stall longer than the
keepalive, a broker stop/start, a broker SIGKILL, a firmware SIGKILL + reboot.

A broker SIGKILL loses mosquitto's in-memory state, so the observer is kept sound: the proxy
is stalled first (whatever the broker acknowledged reaches the observer), the broker is
killed with the device's messages still in flight, and the proxy passes traffic again only
once the observer has resubscribed. Every few minutes: the ledger (sent, delivered,
duplicated, lost) and the heap low-water mark (the minimum `gc_free` the device reported).
At the end the device is stopped and its outbox read: every number below the highest of
each boot must be delivered or still waiting. Exit code 1 if anything was lost.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

from tests.faultproxy import FaultProxy
from tests.integration.hostboard import HostBoard
from tests.ledger import SEQ_USER, Ledger, Observer, outbox_readings
from tests.services import Mosquitto

TOPIC = "v1/devices/me/telemetry"


def config(port: int, interval_ms: int, keepalive: int, max_bytes: int) -> dict:
    return {
        "device": {"name": "soak", "board": "host"},
        "ntp": {"servers": []},
        "platform": {"kind": "thingsboard", "url": f"mqtt://127.0.0.1:{port}", "token": "soak",
                     "keepalive": keepalive},
        "telemetry": {"interval_ms": interval_ms, "health": True, "batch": 20},
        "outbox": {"max_bytes": max_bytes},
    }


class Soak:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.dir = Path(args.dir or tempfile.mkdtemp(prefix="uplink-soak-"))
        self.broker = Mosquitto(self.dir / "broker", persistence=True).start()
        self.obs = Observer(self.broker.ports["mqtt"], [TOPIC], client_id="soak-observer")
        self.proxy = FaultProxy(self.broker.ports["mqtt"], seed=args.seed)
        cfg = config(self.proxy.port, args.interval_ms, args.keepalive, args.max_bytes)
        self.board = HostBoard(self.dir / "board", cfg, user_py=SEQ_USER, heapsize=args.heapsize)
        self.faults: dict[str, int] = {}
        self.t0 = time.monotonic()
        self.board_crashes = 0

    # -- faults ------------------------------------------------------------------------------
    def fault(self) -> str:
        kinds = [("cut", 35), ("cut_mid", 20), ("stall", 15), ("broker_restart", 12), ("broker_kill", 12),
                 ("board_kill", 6)]
        kind = self.rng.choices([k for k, _ in kinds], [w for _, w in kinds])[0]
        if kind == "cut":
            self.proxy.cut_all()
        elif kind == "cut_mid":
            self.proxy.cut_mid_chunk()
        elif kind == "stall":
            # longer than the keepalive: the device has to find out by itself that the link is dead
            self.proxy.stall(True)
            time.sleep(self.args.keepalive * 1.5 + self.rng.random() * 5)
            self.proxy.stall(False)
        elif kind == "broker_restart":
            self.broker.stop()  # SIGTERM: mosquitto saves sessions and queued messages
            time.sleep(self.rng.uniform(0.5, 5))
            self.broker.start()
        elif kind == "broker_kill":
            self.kill_broker()
        elif kind == "board_kill":
            self.board.kill()
            time.sleep(self.rng.uniform(0.2, 3))
            self.board.start()
        self.faults[kind] = self.faults.get(kind, 0) + 1
        return kind

    def kill_broker(self) -> None:
        self.proxy.stall(True)
        self.obs.quiet(0.5)
        n = self.obs.subscribed
        self.broker.kill()
        time.sleep(self.rng.uniform(0.5, 3))
        self.broker.start()
        if not self.obs.wait(lambda: self.obs.subscribed > n, 30):
            raise RuntimeError("observer did not come back after the broker restart")
        self.proxy.stall(False)

    # -- reporting ---------------------------------------------------------------------------
    def heap_low(self) -> int | None:
        heaps = [v["gc_free"] for v in self.obs.readings() if isinstance(v, dict) and "gc_free" in v]
        return min(heaps) if heaps else None

    def report(self, led: Ledger, final=False) -> None:
        mins = (time.monotonic() - self.t0) / 60
        led.extra = {"heap_low": self.heap_low(), "faults": sum(self.faults.values())}
        rs = self.obs.readings()
        depth = rs[-1].get("outbox_depth") if rs and isinstance(rs[-1], dict) else None
        errors = sum(1 for ln in self.board.lines if " E " in ln)
        tag = "FINAL" if final else f"{mins:5.1f} min"
        print(f"[soak {tag}] sent={led.sent} delivered={led.delivered} duplicated={led.duplicated} "
              f"lost={led.lost} waiting={led.waiting} heap_low={led.extra['heap_low']} "
              f"outbox_depth={depth} firmware_errors={errors} "
              f"faults={dict(sorted(self.faults.items()))} proxy_cuts={self.proxy.cuts}", flush=True)
        if led.missing:
            print(f"[soak] missing so far (boot, seq): {led.missing}", flush=True)
        kinds: dict[str, int] = {}
        for ln in self.board.lines:
            if " E " in ln:
                k = ln.split(" E ", 1)[1][:60]
                kinds[k] = kinds.get(k, 0) + 1
        if kinds:
            print(f"[soak] firmware errors by kind: {kinds}", flush=True)

    def interim(self) -> Ledger:
        # while running, readings above the last one delivered may still be in the outbox:
        # count as lost only gaps below the highest delivered number of each boot
        return Ledger.of(self.obs.keys())

    def check_board(self) -> None:
        p = self.board.proc
        if p is not None and p.poll() is not None:
            # the firmware resets itself (exit 75) on a crash: note it and boot again
            self.board_crashes += 1
            print(f"[soak] firmware exited with {p.returncode}; console tail:\n" + "\n".join(self.board.lines[-30:]),
                  flush=True)
            self.board.start()

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> int:
        a = self.args
        print(f"[soak] {a.minutes} min, a reading every {a.interval_ms} ms, a fault every ~{a.fault_s} s, "
              f"heap {a.heapsize}, state in {self.dir}", flush=True)
        self.board.start()
        end = self.t0 + a.minutes * 60
        next_report = self.t0 + a.report_min * 60
        next_fault = self.t0 + self.rng.uniform(0.5, 1.5) * a.fault_s
        try:
            while time.monotonic() < end:
                time.sleep(0.5)
                self.check_board()
                now = time.monotonic()
                if now >= next_fault and now < end - 60:  # the last minute is calm: the backlog drains
                    self.fault()
                    next_fault = time.monotonic() + self.rng.uniform(0.5, 1.5) * a.fault_s
                if now >= next_report:
                    self.report(self.interim())
                    next_report += a.report_min * 60
            self.obs.quiet(2, 60)
            self.board.stop()
            self.obs.quiet(1, 10)
            waiting, dropped = outbox_readings(self.board.state)
            led = Ledger.of(self.obs.keys(), waiting)
            self.report(led, final=True)
            led.extra.update({"dropped": dropped, "firmware_crashes": self.board_crashes,
                              "reconnects": self.proxy.connections})
            print(led.table(f"soak {a.minutes} min"), flush=True)
            errors = [ln for ln in self.board.lines if " E " in ln]
            print(f"[soak] firmware error lines: {len(errors)}; last: {errors[-5:]}", flush=True)
            return 1 if led.lost or dropped or self.board_crashes else 0
        finally:
            self.board.stop()
            self.obs.close()
            self.proxy.close()
            self.broker.stop()


def main(argv=None) -> int:
    # stop cleanly (broker and board processes too) on SIGTERM, and on SIGINT even when
    # started in the background with `&` (where the shell ignores SIGINT for us)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ap = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=120)
    ap.add_argument("--report-min", type=float, default=5, help="ledger every this many minutes")
    ap.add_argument("--interval-ms", type=int, default=200)
    ap.add_argument("--fault-s", type=float, default=30, help="mean seconds between faults")
    ap.add_argument("--keepalive", type=int, default=10)
    ap.add_argument("--heapsize", default="256k")
    ap.add_argument("--max-bytes", type=int, default=400000)
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--dir", help="state directory (default: a new temp dir)")
    return Soak(ap.parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
