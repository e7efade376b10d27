"""`uplink sim DEVICE --send CMD JSON`: a command to a simulated board, as the cloud would send
it (ThingsBoard's server-side RPC over the local broker), and the board's reply."""

from __future__ import annotations

import json
import random
import shlex
import threading

from host_tools.errors import ExitCode, UplinkError
from host_tools.local_broker import local_address

# thingsboard.io/docs/reference/mqtt-api/#server-side-rpc: the platform publishes
# {"method", "params"} on rpc/request/$id and the device answers on rpc/response/$id
REQUEST = "v1/devices/me/rpc/request/"
RESPONSE = "v1/devices/me/rpc/response/"
EXAMPLE = ("setLed", '{"on": true}')  # the template user.py's command


class SendError(UplinkError):
    code = ExitCode.BOARD


def address(device: str, kind: str, url: str) -> tuple[str, int]:
    """The local broker a command to `device` goes through, or SendError saying why none."""
    where = local_address(url)
    if kind != "thingsboard" or where is None:
        raise SendError(f"--send talks to a simulated ThingsBoard device on a local broker "
                        f"(url = \"mqtt://127.0.0.1:PORT\"); '{device}' is {kind} at {url}: send "
                        "commands from the cloud's console")
    return where


def hints(device: str, where: tuple[str, int], fleet_opt: str) -> list[str]:
    """What `uplink sim` prints: how to send this board a command from another terminal."""
    cmd, params = EXAMPLE
    host, port = where
    payload = json.dumps({"method": cmd, "params": json.loads(params)}, separators=(",", ":"))
    return [f"send it a command from another terminal: uplink sim {device}{fleet_opt} --send {cmd} "
            f"{shlex.quote(params)}",
            f"  (or: mosquitto_pub -h {host} -p {port} -t {REQUEST}1 -m {shlex.quote(payload)})"]


def send(where: tuple[str, int], method: str, params, timeout: float = 10) -> object:
    """Publish the request and wait for the board's reply; SendError when none comes."""
    import paho.mqtt.client as mqtt

    rid = random.randint(1000, 999999)  # not one of the board's own request ids (1, 2, ...)
    got: list = []
    subscribed, replied = threading.Event(), threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"uplink-send-{rid}")
    c.on_connect = lambda c, *a: c.subscribe(RESPONSE + str(rid), 1)
    c.on_subscribe = lambda *a: subscribed.set()

    def on_message(c, userdata, msg):
        got.append(msg.payload)
        replied.set()

    c.on_message = on_message
    host, port = where
    try:
        c.connect(host, port)
    except OSError as e:
        raise SendError(f"no broker at {host}:{port} ({e.strerror or e}): is `uplink sim` running?") from None
    c.loop_start()
    try:
        if not subscribed.wait(timeout):
            raise SendError(f"the broker at {host}:{port} did not answer")
        c.publish(REQUEST + str(rid), json.dumps({"method": method, "params": params}), qos=1)
        if not replied.wait(timeout):
            raise SendError(f"no reply from the board in {timeout:g} s: is `uplink sim` running for it?")
    finally:
        c.loop_stop()
        c.disconnect()
    try:
        return json.loads(got[0])
    except ValueError:
        return got[0].decode(errors="replace")
