"""`make demo`: the whole firmware on the host board, a local broker, and the telemetry arriving.

No cloud account needed. The broker is mosquitto when installed, otherwise amqtt (an MQTT
broker written in Python) in this process. The firmware speaks the ThingsBoard device API to
it, exactly as it would to a real ThingsBoard; after a few readings the demo sends a
server-side RPC (setLed) and shows the device's reply.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from rich.console import Console
from rich.table import Table
from rich.text import Text

from host_tools import hostboard
from host_tools.local_broker import LocalBroker

console = Console(highlight=False)
# An ESP32-sized budget on the 64-bit host board (make bench prints the smallest that works).
DEMO_HEAP = "128k"
TOPIC = "v1/devices/me/"


def demo_config(port: int, interval_s: int) -> dict:
    return {
        "device": {"name": "demo-board", "board": "host"},
        "wifi": {"networks": []},
        "ntp": {"servers": []},
        # client_rpc off: a plain broker has nobody to answer getSessionLimits/getCurrentTime
        # (the adapter drops the echo of its own requests, so this only saves the asking)
        "platform": {"kind": "thingsboard", "url": f"mqtt://127.0.0.1:{port}", "token": "demo-token",
                     "client_rpc": False},
        "telemetry": {"interval_s": interval_s},
        # a live console: each reading shows as it is taken, not held in RAM to spare flash
        # (the host board has no flash to wear)
        "outbox": {"max_bytes": 65536, "hold_ms": 0},
    }


def show(topic: str, payload: bytes) -> None:
    try:
        data = json.loads(payload)
    except ValueError:
        data = payload.decode(errors="replace")
    kind = topic[len(TOPIC):] if topic.startswith(TOPIC) else topic
    if kind == "telemetry":
        for item in data if isinstance(data, list) else [data]:
            values = item.get("values", item)
            ts = item.get("ts")
            when = time.strftime("%H:%M:%S", time.localtime(ts / 1000)) if ts else "--:--:--"
            cells = "  ".join(f"[cyan]{k}[/]={v}" for k, v in values.items())
            console.print(f"[bold green]telemetry[/] {when}  {cells}")
    else:
        console.print(f"[bold magenta]{kind}[/] {json.dumps(data)}")


def board_line(text: str) -> None:
    """`board | LINE`, a long line wrapped under itself so each part still reads as the
    board's (and its brackets never taken for markup)."""
    grid = Table.grid()
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row(Text("board | ", style="dim"), Text(text, style="dim"))
    console.print(grid)


def stream_board(proc: subprocess.Popen) -> None:
    assert proc.stdout is not None
    for line in iter(proc.stdout.readline, b""):
        board_line(line.decode(errors="replace").rstrip())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="make demo", description=__doc__)
    ap.add_argument("--seconds", type=float, default=0, help="stop after this long (default: until Ctrl-C)")
    ap.add_argument("--interval", type=int, default=2, help="telemetry interval in seconds")
    args = ap.parse_args(argv)

    broker = LocalBroker().start()
    console.print(f"[bold]Uplink demo[/]: {broker.kind} on 127.0.0.1:{broker.port}, firmware on the host board")
    state = Path(tempfile.mkdtemp(prefix="uplink-demo-board-"))
    (state / "config.json").write_text(json.dumps(demo_config(broker.port, args.interval), indent=1))

    received = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="demo-cloud")
    sub.on_connect = lambda c, *a: c.subscribe([(TOPIC + "telemetry", 1), (TOPIC + "attributes", 1),
                                                (TOPIC + "rpc/response/+", 1)])

    def on_message(c, userdata, msg):
        received.append(msg.topic)
        show(msg.topic, msg.payload)
        if msg.topic.endswith("telemetry") and received.count(TOPIC + "telemetry") == 3:
            console.print('[bold yellow]cloud -> device[/] RPC setLed {"on": true}')
            c.publish(TOPIC + "rpc/request/1", json.dumps({"method": "setLed", "params": {"on": True}}), qos=1)

    sub.on_message = on_message
    sub.connect("127.0.0.1", broker.port)
    sub.loop_start()

    proc = hostboard.start(state, compiled=True, heapsize=hostboard.budget_heap(DEMO_HEAP), tied=True)
    threading.Thread(target=stream_board, args=(proc,), daemon=True).start()
    console.print("[dim]Ctrl-C to stop[/]")
    try:
        end = time.monotonic() + args.seconds if args.seconds else None
        while proc.poll() is None and (end is None or time.monotonic() < end):
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        proc.terminate()
        proc.wait()
        sub.loop_stop()
        broker.stop()
    n = received.count(TOPIC + "telemetry")
    console.print(f"[bold]demo stopped[/]: {n} telemetry messages received")
    note = hostboard.model_note()
    if note:
        console.print(f"[yellow]{note}[/]", highlight=False, soft_wrap=True)
    return 0 if n else 1


if __name__ == "__main__":
    raise SystemExit(main())
