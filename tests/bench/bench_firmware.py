"""The whole firmware (.mpy) on the host board: the smallest -X heapsize it runs in, per
transport, found by bisection on the ESP32 model (32-bit, 16-byte GC blocks, like the chip)
and on the 64-bit PyPI port (8-byte pointers, 32-byte blocks: more heap for the same code);
the free GC heap it reports while running; and what each module costs in heap on the model.

"Runs" = boots, connects and delivers 20 telemetry messages within 15 s.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from host_tools import hostboard
from tests.integration import mpy
from tests.integration.hostboard import HostBoard
from tests.services import Mosquitto

HEAPS = [f"{k}k" for k in range(40, 256 + 1, 8)]
WANT = 20


def _config(broker: Mosquitto, scheme: str) -> dict:
    return {
        "device": {"name": "bench", "board": "host"},
        "ntp": {"servers": []},
        "platform": {"kind": "thingsboard", "url": broker.url(scheme), "token": "t",
                     **({"ca": "ca.der"} if scheme in ("mqtts", "wss") else {})},
        "telemetry": {"interval_ms": 100},
    }


def run_at(broker: Mosquitto, scheme: str, heap: str) -> tuple[bool, int | None]:
    got: list[bytes] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_connect = lambda c, *a: c.subscribe("v1/devices/me/telemetry")
    sub.on_message = lambda c, u, m: got.append(m.payload)
    sub.connect("localhost", broker.ports["mqtt"])
    sub.loop_start()
    board = HostBoard(Path(tempfile.mkdtemp(prefix="uplink-bench-")), _config(broker, scheme),
                      heapsize=heap, files={"ca.der": broker.pki.ca_der.read_bytes()}).start()
    end = time.monotonic() + 15
    while time.monotonic() < end and len(got) < WANT and board.proc.poll() is None:
        time.sleep(0.1)
    board.stop()
    sub.loop_stop()
    sub.disconnect()
    free = None
    for p in reversed(got):
        data = json.loads(p)
        item = data[-1] if isinstance(data, list) else data
        values = item.get("values", {})
        free = values.get("gc_free")
        if free is not None:
            break
    return len(got) >= WANT, free


@contextlib.contextmanager
def interpreter(model: bool):
    """Every micropython the harness starts is the ESP32 model, or the PyPI port."""
    real = hostboard.micropython
    hostboard.micropython = lambda model_=True: real(model=model and model_)  # type: ignore[assignment]
    try:
        yield real(model=model)
    finally:
        hostboard.micropython = real  # type: ignore[assignment]


def smallest(broker: Mosquitto, scheme: str) -> tuple[str | None, int | None]:
    # bisection: a heap that runs means every bigger one does
    lo, hi, free = 0, len(HEAPS) - 1, None
    ok, f = run_at(broker, scheme, HEAPS[hi])
    if not ok:
        return None, None
    free = f
    while lo < hi:
        mid = (lo + hi) // 2
        ok, f = run_at(broker, scheme, HEAPS[mid])
        if ok:
            hi, free = mid, f
        else:
            lo = mid + 1
    return HEAPS[hi], free


MODULES = """
import gc, sys
gc.collect()
base = gc.mem_free()
prev = base
for name in sys.argv[1:]:
    __import__(name)
    gc.collect()
    now = gc.mem_free()
    print("MOD", name, prev - now)
    prev = now
print("MOD total", base - prev)
"""

# in the order the app imports them over mqtts (ThingsBoard); uplink.cloud only there when
# user.py imports it; then the OTA modules, each loaded only while an update or a trial runs
# (uplink.ota.start): ota and ota_thingsboard, ota_blynk on Blynk; ota_trial for a trial or an
# outcome owed, before any download; ota_stage for a download; ota_guard for one check at a
# time; ota_fetch and https for the boot's download
ORDER = ["uplink", "uplink.log", "uplink.config", "uplink.board", "uplink.board_host", "uplink.clock",
         "uplink.runner", "uplink.context", "uplink.telemetry", "uplink.app", "uplink.platforms",
         "uplink.platforms.thingsboard", "uplink.outbox",
         "uplink.publisher", "uplink.transport", "uplink.mqtt", "uplink.ws", "asyncio", "ssl", "uplink.cloud",
         "uplink.ota", "uplink.ota_thingsboard", "uplink.ota_blynk", "uplink.ota_trial", "uplink.ota_stage",
         "uplink.ota_guard",
         "uplink.https",
         "uplink.ota_fetch"]


# a Blynk device's own modules, after the ones every device loads (the gateway and uplink.cloud
# parts only for a gateway or a user.py that uses them)
BLYNK_ORDER = ["uplink", "uplink.log", "uplink.board", "uplink.clock", "uplink.context", "uplink.telemetry",
               "uplink.platforms", "uplink.outbox", "uplink.publisher", "uplink.transport", "uplink.mqtt",
               "uplink.platforms.blynk", "uplink.platforms.blynk_gateway", "uplink.platforms.blynk_cloud"]


def module_heap(name: str = "ESP32 model") -> None:
    p = mpy.start(MODULES, compiled=True, heapsize="256k", args=tuple(ORDER))
    try:
        p.wait(60)
    except (AssertionError, subprocess.TimeoutExpired):
        pass
    rows = [ln.split()[1:] for ln in p.output.splitlines() if ln.startswith("MOD ")]
    print(f"heap taken by importing each module (.mpy, {name}, after gc.collect; ws only for ws/wss,"
          " config and board_host not kept on an ESP32, cloud only for a user.py that uses it,"
          " the ota modules only while an update or a trial runs):")
    print("  " + ", ".join(f"{n.replace('uplink.', '')} {int(b) / 1024:.1f}k" for n, b in rows), flush=True)
    p = mpy.start(MODULES, compiled=True, heapsize="256k", args=tuple(BLYNK_ORDER))
    try:
        p.wait(60)
    except (AssertionError, subprocess.TimeoutExpired):
        pass
    rows = [ln.split()[1:] for ln in p.output.splitlines() if ln.startswith("MOD ")][-4:]
    print(f"  Blynk's modules ({name}, bytes): " + ", ".join(f"{n.replace('uplink.', '')} {b}" for n, b in rows),
          flush=True)


# Chip mode (tools/esp32-model: -X chip): the firmware in each board's memory, the GC heap
# growing into the IDF heap that mbedTLS takes its session from. user.py reports, each reading
# (after a collection): what is resident, the GC heap's size (its areas), and the IDF heap's
# largest free block, which the next TLS handshake needs ~17 KB of (its 16 KB in-buffer).
CHIP_USER = """
import gc, esp32
def read():
    gc.collect()
    lg = max(r[2] for r in esp32.idf_heap_info(esp32.HEAP_DATA))
    return {"resident": gc.mem_alloc(), "gc_heap": gc.mem_alloc() + gc.mem_free() - lg, "idf_lg": lg}
"""
CHIP_BOARDS = ("esp32-devkitc", "esp32-c3", "esp32-s3")
# each board with the firmware on its filesystem (a stock MicroPython image) and in a ROMFS
# partition (device.romfs: bytecode in flash, docs/hardware.md "Firmware in ROMFS"); with
# BENCH_ARGS="firmware frozen", frozen into a measuring model (tools/esp32-model/README.md)
CHIP_SETUPS = [(b, r) for b in CHIP_BOARDS for r in ("fs", "romfs")]
CHIP_READINGS = 8


def _label(board: str, layout: str) -> str:
    return board + ("" if layout == "fs" else "+" + layout)


def model_has_frozen_firmware() -> bool:
    exe = hostboard.esp32_model()
    probe = "import sys\nsys.path[:] = ['.frozen']\nimport uplink"
    return bool(exe) and subprocess.run([exe, "-c", probe], capture_output=True).returncode == 0


def _board(cfg: dict, layout: str, **kw) -> HostBoard:
    """The host board for a layout: "frozen" boots a flash without uplink/, the model's frozen
    package standing in for it (as an image built with it frozen, and nothing on the filesystem)."""
    fw = None
    if layout == "frozen":
        fw = hostboard.without_package(hostboard.firmware_dir(True),
                                       Path(tempfile.mkdtemp(prefix="uplink-bench-")) / "flash")
    return HostBoard(Path(tempfile.mkdtemp(prefix="uplink-bench-")) / "board", cfg, firmware=fw, **kw)


def _chip_config(broker: Mosquitto, board: str, case: str, layout: str = "fs") -> dict:
    scheme = "mqtts" if case == "2 clouds" else case
    ca = {"ca": "ca.der"} if scheme in ("mqtts", "wss") else {}
    tb = {"kind": "thingsboard", "url": broker.url(scheme), "token": "t", **ca}
    bl = {"kind": "blynk", "url": broker.url(scheme), "token": "b", "template_id": "TMPL", "template_name": "B",
          "client_id": "bench-blynk", **ca}
    return {"device": {"name": "bench", "board": board, "romfs": layout == "romfs", "frozen": layout == "frozen"},
            "ntp": {"servers": []},
            **({"platforms": [tb, bl]} if case == "2 clouds" else {"platform": tb}),
            "telemetry": {"interval_ms": 250}}


def chip_run(broker: Mosquitto, board: str, case: str, layout: str = "fs") -> tuple[list[dict], str]:
    """The readings ThingsBoard got once every session was up, and the console."""
    got: list[dict] = []
    blynk: list[bytes] = []

    def on_message(c, u, m):
        if m.topic != "v1/devices/me/telemetry":
            blynk.append(m.payload)
            return
        data = json.loads(m.payload)
        for item in data if isinstance(data, list) else [data]:
            v = item.get("values", item)
            if "idf_lg" in v and (case != "2 clouds" or blynk):
                got.append(v)

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_connect = lambda c, *a: c.subscribe([("v1/devices/me/telemetry", 0), ("ds/#", 0)])
    sub.on_message = on_message
    sub.connect("localhost", broker.ports["mqtt"])
    sub.loop_start()
    board_ = _board(_chip_config(broker, board, case, layout), layout,
                    user_py=CHIP_USER, files={"ca.der": broker.pki.ca_der.read_bytes()}).start()
    end = time.monotonic() + 30
    while time.monotonic() < end and len(got) < CHIP_READINGS and board_.proc.poll() is None:
        time.sleep(0.1)
    board_.stop()
    sub.loop_stop()
    sub.disconnect()
    return got, board_.console()


def chip_memory(broker: Mosquitto, setups=CHIP_SETUPS) -> None:
    if not hostboard.esp32_model():
        print(f"chip mode: no ESP32 model ({hostboard.esp32_model_missing()})")
        return
    print("chip mode (ESP32 model -X chip, the board's IDF heap; KB; after the TLS handshake(s), "
          f"over {CHIP_READINGS} readings): resident firmware / GC heap (its areas, after growth) / "
          "largest free IDF block (last, min)")
    for board, layout in setups:
        name = _label(board, layout)
        for case in ("mqtt", "mqtts", "wss", "2 clouds"):
            got, console = chip_run(broker, board, case, layout)
            # out of memory: ENOMEM at the buffers, or mbedTLS's own words half-way through
            enomem = console.count("ENOMEM") + console.count("not correctly signed")
            mem_errors = console.count("MemoryError")
            if len(got) < CHIP_READINGS:
                why = next((ln for ln in reversed(console.splitlines()) if "rror" in ln), "")
                print(f"  {name:19} {case:8} did not run ({len(got)} readings; ENOMEM {enomem}, "
                      f"MemoryError {mem_errors}): {why[:140]}", flush=True)
                continue
            last = got[-1]
            print(f"  {name:19} {case:8} resident {last['resident'] / 1024:5.1f}  GC heap "
                  f"{max(g['gc_heap'] for g in got) / 1024:5.1f}  IDF largest {last['idf_lg'] / 1024:5.1f} "
                  f"(min {min(g['idf_lg'] for g in got) / 1024:5.1f})  ENOMEM {enomem}  MemoryError {mem_errors}",
                  flush=True)


RECONNECTS = 100


def connects(b: HostBoard) -> int:
    return sum("I mqtt: connected" in ln for ln in list(b.lines))  # (console() is the last 200 lines)


def reconnects(broker: Mosquitto, board: str = "esp32-devkitc", n: int = RECONNECTS, layout: str = "fs") -> None:
    """The one-TLS-cloud goal (issue 23): a ThingsBoard device over mqtts on `board`, its
    connection cut n times (tests/faultproxy.py): handshakes that failed for memory, and the
    largest free IDF block after each handshake (health, idf_largest)."""
    from tests.faultproxy import FaultProxy

    proxy = FaultProxy(broker.ports["mqtts"])
    cfg = _chip_config(broker, board, "mqtts", layout)
    cfg["platform"]["url"] = f"mqtts://localhost:{proxy.port}"
    cfg["telemetry"] = {"interval_ms": 200, "health": True}
    lg: list[int] = []
    heap: list[int] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_connect = lambda c, *a: c.subscribe("v1/devices/me/telemetry")

    def on_message(c, u, m):
        data = json.loads(m.payload)
        for item in data if isinstance(data, list) else [data]:
            v = item.get("values", item)
            if "idf_largest" in v:
                lg.append(v["idf_largest"])
                heap.append(v["gc_heap"])

    sub.on_message = on_message
    sub.connect("localhost", broker.ports["mqtt"])
    sub.loop_start()
    b = _board(cfg, layout, user_py=CHIP_USER, files={"ca.der": broker.pki.ca_der.read_bytes()}).start()
    t0 = time.monotonic()
    done = 0
    try:
        for _ in range(n + 1):
            want = done + 1
            end = time.monotonic() + 60
            while time.monotonic() < end and connects(b) < want:
                time.sleep(0.05)
            done = connects(b)
            if done < want:
                break
            seen, end = len(lg), time.monotonic() + 10
            while time.monotonic() < end and len(lg) <= seen:  # a reading after the handshake
                time.sleep(0.05)
            proxy.cut_all()
    finally:
        b.stop()
        sub.loop_stop()
        sub.disconnect()
        proxy.close()
    console = "\n".join(b.lines)
    enomem = console.count("ENOMEM") + console.count("not correctly signed")
    print(f"  {_label(board, layout)} mqtts, connection cut {n} times: {max(done - 1, 0)} reconnects in "
          f"{time.monotonic() - t0:.0f}s, "
          f"handshakes failed for memory {enomem}, MemoryError {console.count('MemoryError')}, largest free IDF "
          f"block after a handshake: min {min(lg, default=0) / 1024:.1f} KB, last {(lg or [0])[-1] / 1024:.1f} KB "
          f"(goal: >= 16 KB, 0 failed); GC heap {min(heap, default=0) / 1024:.1f}-{max(heap, default=0) / 1024:.1f} KB",
          flush=True)


def main(argv: list[str]) -> None:
    broker = Mosquitto().start()
    try:
        if "frozen" in argv:  # UPLINK_ESP32_MODEL=<a model built with FREEZE=>
            if not model_has_frozen_firmware():
                print("frozen: the ESP32 model has no firmware frozen in it: build one with FREEZE= and name it in "
                      "UPLINK_ESP32_MODEL (tools/esp32-model/README.md, \"A model with the firmware frozen\")")
                return
            setups = [(b, "frozen") for b in CHIP_BOARDS]
            chip_memory(broker, setups)
            for board, layout in setups:
                reconnects(broker, board, layout=layout)
            return
        chip_memory(broker)
        for board, layout in CHIP_SETUPS:
            reconnects(broker, board, layout=layout)
        if "chip" in argv:  # BENCH_ARGS="firmware chip": the chip figures only
            return
        for model, name in ((True, "ESP32 model"), (False, "PyPI port (64-bit)")):
            with interpreter(model) as exe:
                print(f"{name}: {exe}", flush=True)
                for scheme in ("mqtt", "mqtts", "wss"):
                    heap, free = smallest(broker, scheme)
                    if heap is None:
                        print(f"  {scheme:6} did not run in {HEAPS[-1]}", flush=True)
                    else:
                        print(f"  {scheme:6} smallest heap that runs: {heap} "
                              f"(free GC heap while running: {free} bytes)",
                              flush=True)
        for model, name in ((True, "ESP32 model"), (False, "PyPI port")):
            with interpreter(model):
                module_heap(name)
    finally:
        broker.stop()


if __name__ == "__main__":
    main([])
