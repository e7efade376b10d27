"""The loss ledger of the chaos tests and the soak: what the device sent, what the cloud got.

Readings carry `{"boot": b, "seq": n}` (SEQ_USER below numbers them, per boot). A reading
counts as *sent* when the cloud received it or it still waits in the device's outbox at the
end; it is *lost* when its number is below the highest sent number of its boot and it is
neither delivered nor waiting. (A reading the device read but had not yet stored when it was
SIGKILLed is at the tail of its boot and was never accepted: it is not counted.)

    obs = Observer(port, ["v1/devices/me/telemetry"])     # a paho subscriber, persistent session
    led = Ledger.of(obs.readings(), waiting=outbox_readings(state_dir))
    print(led.table("10k cuts"))
    assert led.lost == 0
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt

# user.py for the host board: numbers its readings; the boot counter survives a SIGKILL
SEQ_USER = """
try:
    with open("boot_n") as f:
        _boot = int(f.read()) + 1
except (OSError, ValueError):
    _boot = 1
with open("boot_n", "w") as f:
    f.write(str(_boot))
_n = [0]
def read():
    _n[0] += 1
    return {"boot": _boot, "seq": _n[0]}
def handle(cmd):
    raise ValueError("unknown command")
"""


def key(values: dict) -> tuple[int, int]:
    return (values.get("boot", 0), values["seq"])


def fw_identity(doc) -> bool:
    """ThingsBoard's current_fw_title/_version telemetry, sent at every connect (the OTA guide's
    "Update process"): a message on the telemetry topic that is no reading."""
    return isinstance(doc, dict) and "values" not in doc and "current_fw_title" in doc


@dataclass
class Ledger:
    sent: int = 0
    delivered: int = 0
    duplicated: int = 0
    lost: int = 0
    waiting: int = 0  # accepted, still in the outbox at the end (not lost, not yet delivered)
    out_of_order: int = 0
    missing: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # scenario-specific numbers for the table

    @classmethod
    def of(cls, received: list[tuple[int, int]], waiting: list[tuple[int, int]] = (), *,
           dropped: set | None = None, sent: set | None = None) -> "Ledger":
        """received: keys in arrival order (duplicates included); waiting: keys in the outbox.
        dropped: keys the scenario expects to be gone (outbox full): neither sent nor lost.
        sent: when the scenario knows exactly what the device accepted, those keys."""
        got = set(received)
        wait = set(waiting) - got
        top: dict[int, int] = {}
        for b, n in got | wait:
            top[b] = max(top.get(b, 0), n)
        allk = {(b, n) for b, m in top.items() for n in range(1, m + 1)} if sent is None else set(sent)
        dropped = (dropped or set()) - got - wait
        missing = sorted(allk - got - wait - dropped)
        first = list(dict.fromkeys(received))
        ooo = sum(1 for a, b in zip(first, first[1:], strict=False) if b < a)
        return cls(sent=len(allk - dropped), delivered=len(got), duplicated=len(received) - len(got),
                   lost=len(missing), waiting=len(wait), out_of_order=ooo, missing=missing[:20])

    def row(self, name: str) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.extra.items())
        return (f"| {name:<28} | {self.sent:>7} | {self.delivered:>9} | {self.duplicated:>10} | {self.lost:>4} "
                f"| {self.waiting:>7} | {extra}")

    def table(self, name: str) -> str:
        head = (f"| {'scenario':<28} | {'sent':>7} | {'delivered':>9} | {'duplicated':>10} | {'lost':>4} "
                f"| {'waiting':>7} | notes")
        return "\nLEDGER\n" + head + "\n" + self.row(name)


class Observer:
    """The cloud side: a paho subscriber with a persistent session, straight to the broker
    (never through the fault proxy). Counts its (re)connections so a test can wait until it
    is back before letting the device's traffic through again."""

    def __init__(self, port: int, topics: list[str], client_id: str = "observer", auth: tuple | None = None):
        self.msgs: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self._readings: list = []
        self._parsed = 0
        self.subscribed = 0  # SUBACKs received: one per (re)connection
        self.topics = topics
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_message = self._on_message
        self.c.reconnect_delay_set(0.05, 0.3)
        if auth:
            self.c.username_pw_set(*auth)
        self.c.connect("127.0.0.1", port, keepalive=10)
        self.c.loop_start()
        self.wait(lambda: self.subscribed > 0, 10)

    def _on_connect(self, c, userdata, flags, rc, props=None):
        c.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(self, *a):
        self.subscribed += 1

    def _on_message(self, c, u, msg):
        with self.lock:
            self.msgs.append((msg.topic, msg.payload))

    def readings(self) -> list[dict]:
        """The values dicts of every telemetry reading received, in arrival order."""
        with self.lock:
            new = self.msgs[self._parsed:]
            self._parsed = len(self.msgs)
        for topic, payload in new:  # parsed once: tests poll this often
            if topic.endswith("telemetry"):
                data = json.loads(payload)
                for r in data if isinstance(data, list) else [data]:
                    if fw_identity(r):
                        continue
                    # ThingsBoard: {"ts", "values"} when the device knows the time, else the values
                    self._readings.append(r.get("values", r) if isinstance(r, dict) else r)
        return self._readings

    def keys(self) -> list[tuple[int, int]]:
        return [key(v) for v in self.readings() if isinstance(v, dict) and "seq" in v]

    def count(self) -> int:
        with self.lock:
            return len(self.msgs)

    def quiet(self, for_s: float = 0.5, timeout: float = 10) -> None:
        """Wait until no message has arrived for for_s (what the broker had is delivered)."""
        end = time.monotonic() + timeout
        n, since = self.count(), time.monotonic()
        while time.monotonic() < end:
            time.sleep(0.05)
            m = self.count()
            if m != n:
                n, since = m, time.monotonic()
            elif time.monotonic() - since >= for_s:
                return

    @staticmethod
    def wait(pred, timeout: float = 30) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


OUTBOX_DUMP = """
import os, sys, json
from uplink.outbox import Outbox
os.chdir(sys.argv[1])
ob = Outbox(sys.argv[2], int(sys.argv[3]))
after = 0
while True:
    recs = ob.read(after, 16)
    if not recs:
        break
    for rid, data in recs:
        try:
            v = json.loads(data)["values"]
            print("REC", v.get("boot", 0), v["seq"])
        except Exception as e:
            print("BAD", rid, e)
    after = recs[-1][0]
print("DROPPED", ob.dropped)
"""


def outbox_readings(state: Path, dir: str = "outbox", max_bytes: int = 1 << 30) -> tuple[list, int]:
    """What the device's outbox holds (keys of the readings waiting) and its dropped counter,
    read by the firmware's own Outbox in MicroPython. The device must not be running."""
    from tests.integration import mpy

    script = state.parent / (state.name + "-dump.py")
    script.write_text(OUTBOX_DUMP)
    p = mpy.start(str(script), args=(state, dir, max_bytes))
    if p.wait(60) != 0:
        raise AssertionError("outbox dump failed:\n" + p.output)
    keys, dropped = [], 0
    for line in p.lines:
        parts = line.split()
        if parts and parts[0] == "REC":
            keys.append((int(parts[1]), int(parts[2])))
        elif parts and parts[0] == "DROPPED":
            dropped = int(parts[1])
        elif parts and parts[0] == "BAD":
            raise AssertionError("unreadable record in the outbox: " + line)
    return keys, dropped


def show(capsys, text: str) -> None:
    """Print past pytest's output capture (the `capsys` fixture): a scenario's ledger belongs
    in `make test`'s output even when the scenario passes."""
    if capsys is None:
        print(text, flush=True)
        return
    with capsys.disabled():
        print(text, flush=True)
