"""ThingsBoard's firmware OTA side, played on mosquitto by a paho client: it announces a
bundle with the fw_* shared attributes (on the attributes topic and in answers to the
device's attribute requests) and answers `v2/fw/request/{id}/chunk/{n}` (payload: the chunk
size) with that slice of the file on `v2/fw/response/{id}/chunk/{n}`, an empty payload past
the end, as ThingsBoard's MQTT device API does (docs: "OTA updates" of the MQTT API). It
records the device's fw_state telemetry, and its readings."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

ME = "v1/devices/me/"


class TbOta:
    def __init__(self, port: int, bundle: Path | bytes, *, title: str = "uplink-host", version: str = "2",
                 checksum: str | None = None, size: int | None = None, host: str = "127.0.0.1"):
        import paho.mqtt.client as mqtt

        self.data = bundle if isinstance(bundle, bytes) else Path(bundle).read_bytes()
        self.attrs = {"fw_title": title, "fw_version": version, "fw_size": size or len(self.data),
                      "fw_checksum": checksum or hashlib.sha256(self.data).hexdigest(),
                      "fw_checksum_algorithm": "SHA256"}
        self.states: list[dict] = []
        self.readings: list[dict] = []  # the values of telemetry that is not fw_state
        self.current: list[dict] = []  # current_fw_title/_version telemetry without fw_state
        self.chunks = 0
        self.bytes_out = 0
        self.on_chunk = None  # fn(n) after each answer: tests cut connections from here
        self.on_state = None  # fn(fw_state) as each arrives: a bench cuts the power from here
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"tb-ota-{id(self)}")
        self.c.on_connect = lambda c, *a: (c.subscribe([("v2/fw/request/+/chunk/+", 0), (ME + "telemetry", 1),
                                                        (ME + "attributes/request/+", 1)]), self.ready.set())
        self.c.on_message = self._on_message
        self.c.connect(host, port)
        self.c.loop_start()
        assert self.ready.wait(10), "TB OTA side could not connect to mosquitto"
        time.sleep(0.2)

    def announce(self) -> None:
        self.c.publish(ME + "attributes", json.dumps(self.attrs), 1).wait_for_publish(5)

    def _on_message(self, c, u, msg) -> None:
        t = msg.topic
        if t.startswith("v2/fw/request/"):
            _, _, _, rid, _, n = t.split("/")
            size = int(msg.payload or b"0")
            part = self.data[int(n) * size:(int(n) + 1) * size]
            c.publish(f"v2/fw/response/{rid}/chunk/{n}", part, 0)
            with self.lock:
                self.chunks += 1
                self.bytes_out += len(part)
            if self.on_chunk:
                self.on_chunk(int(n))
        elif t.startswith(ME + "attributes/request/"):
            keys = json.loads(msg.payload).get("sharedKeys", "").split(",")
            shared = {k: v for k, v in self.attrs.items() if k in keys}
            c.publish(ME + "attributes/response/" + t.rsplit("/", 1)[1], json.dumps({"shared": shared}), 1)
        elif t == ME + "telemetry":
            doc = json.loads(msg.payload)
            for d in doc if isinstance(doc, list) else [doc]:
                if isinstance(d, dict) and "fw_state" in d:
                    with self.lock:
                        self.states.append(d)
                    if self.on_state:
                        self.on_state(d["fw_state"])
                elif isinstance(d, dict) and "current_fw_title" in d:
                    with self.lock:
                        self.current.append(d)  # what runs, told at every connect
                elif isinstance(d, dict):
                    with self.lock:
                        self.readings.append(d.get("values", d))

    def wait_state(self, state: str, timeout: float = 60, console=None) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                for d in self.states:
                    if d["fw_state"] == state:
                        return d
            time.sleep(0.1)
        raise AssertionError(f"no fw_state {state}; got {[d['fw_state'] for d in self.states]}"
                             + ("\n" + console() if console else ""))

    def wait_reading(self, pred, timeout: float = 60, console=None) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                for v in self.readings:
                    if pred(v):
                        return v
            time.sleep(0.1)
        raise AssertionError(f"no such reading; last: {self.readings[-5:]}" + ("\n" + console() if console else ""))

    def stop(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()
