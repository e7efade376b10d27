"""What the console's D lines (firmware/uplink/log.py pub/cmd: a line per MQTT message of
readings and per command) cost on the ESP32 model, compiled: the time to build one (printing
left out: on the chip that is the UART's 115200 baud, ~87 us per byte), the heap a line
allocates (garbage, nothing kept), the heap log.mpy takes once imported, and what
device.console = "info" leaves of it.
"""

from __future__ import annotations

from tests.integration import mpy

N = 2000

SCRIPT = """
import gc, json, time
import uplink  # the package's own heap is not log's
gc.collect()
before = gc.mem_alloc()
from uplink import log
gc.collect()
print("import", gc.mem_alloc() - before)
log.print = lambda s: None  # the line is built, not sent: the UART's time is the baud rate's
small = json.dumps({"ts": 1796060186879, "values": {"temperature": 20.3, "led": False}}).encode()
batch = json.dumps([{"ts": 1796060186879 + i, "values": {"temperature": 20.3, "seq": i}}
                    for i in range(8)]).encode()
big = {"k%03d" % i: "v" * 30 for i in range(100)}
cases = (("pub, 1 reading (%d B)" % len(small), lambda: log.pub("v1/devices/me/telemetry", small, 1)),
         ("pub, 8 readings (%d B)" % len(batch), lambda: log.pub("v1/devices/me/telemetry", batch, 8)),
         ("cmd setLed", lambda: log.cmd("setLed", {"on": True}, {"led": True})),
         ("cmd, 4 KB attributes", lambda: log.cmd("attributes", big, None)))
for level in (0, 1):
    log.level = level
    for name, fn in cases:
        fn()
        gc.collect()
        a = gc.mem_alloc()
        fn()
        alloc = gc.mem_alloc() - a
        t = time.ticks_us()
        for _ in range(N):
            fn()
        us = time.ticks_diff(time.ticks_us(), t) / N
        print("line", log.LEVELS[level], name, alloc, "%.1f" % us)
"""


def main(argv: list[str]) -> None:
    p = mpy.start(SCRIPT.replace("N)", f"{N})").replace("/ N", f"/ {N}"), compiled=True, heapsize="96k")
    assert p.wait(300) == 0, p.output
    print("firmware/uplink/log.py, compiled, on the ESP32 model (96k heap); printing left out")
    for line in p.lines:
        parts = line.split(" ")
        if parts[0] == "import":
            print(f"  log.mpy imported: {parts[1]} B of heap")
        elif parts[0] == "line":
            level, alloc, us = parts[1], parts[-2], parts[-1]
            name = " ".join(parts[2:-2])
            print(f"  console {level!r:7} {name:30} {alloc:>5} B allocated per line, {us:>6} us")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
