"""ThingsBoard device provisioning from the laptop (`uplink provision --register`), with paho-mqtt.

Connect as username "provision", subscribe /provision/response, publish /provision/request
{"deviceName", "provisionDeviceKey", "provisionDeviceSecret"}; the answer carries the new
device's access token (credentialsValue) or why not (NOT_FOUND, FAILURE + errorMsg).
"""

from __future__ import annotations

import json
import ssl
import threading
from urllib.parse import urlsplit

from host_tools.errors import ExitCode, UplinkError

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883, "ws": 80, "wss": 443}


class RegisterError(UplinkError):
    code = ExitCode.CLOUD


def register(url: str, device_name: str, key: str, secret: str, *, ca_pem: str | None = None,
             insecure: bool = False, timeout: float = 15.0) -> str:
    """Provision `device_name`; returns the access token ThingsBoard issued."""
    import paho.mqtt.client as mqtt

    u = urlsplit(url)
    scheme = u.scheme
    if scheme not in DEFAULT_PORTS or not u.hostname:
        raise RegisterError(f"cannot provision over {url!r}: expected mqtt, mqtts, ws or wss")
    port = u.port or DEFAULT_PORTS[scheme]
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="",
                         transport="websockets" if scheme in ("ws", "wss") else "tcp",
                         protocol=mqtt.MQTTv311)
    if scheme in ("ws", "wss"):
        client.ws_set_options(path=u.path or "/mqtt")
    if scheme in ("mqtts", "wss"):
        ctx = ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()
        if insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        client.tls_set_context(ctx)
    client.username_pw_set("provision")
    done = threading.Event()
    answer: dict = {}

    def on_connect(c, _ud, _flags, rc, _props=None):
        if rc.is_failure:
            answer["error"] = f"the broker refused the provisioning connection: {rc}"
            done.set()
            return
        c.subscribe("/provision/response", qos=1)

    def on_subscribe(c, *_a):
        c.publish("/provision/request", json.dumps({
            "deviceName": device_name, "provisionDeviceKey": key, "provisionDeviceSecret": secret,
        }), qos=1)

    def on_message(_c, _ud, msg):
        try:
            answer["reply"] = json.loads(msg.payload)
        except ValueError:
            answer["error"] = "ThingsBoard answered with something that is not JSON"
        done.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    try:
        client.connect(u.hostname, port, keepalive=30)
    except (OSError, ssl.SSLError) as e:
        raise RegisterError(f"cannot reach {u.hostname}:{port} to provision: {e}") from None
    client.loop_start()
    try:
        if not done.wait(timeout):
            raise RegisterError(f"no provisioning answer from {u.hostname}:{port} within {timeout:.0f} s")
    finally:
        client.disconnect()
        client.loop_stop()
    if "error" in answer:
        raise RegisterError(answer["error"])
    reply = answer["reply"]
    status = reply.get("status") if isinstance(reply, dict) else None
    if status == "SUCCESS" and reply.get("credentialsType", "ACCESS_TOKEN") == "ACCESS_TOKEN":
        token = reply.get("credentialsValue")
        if isinstance(token, dict):  # some versions nest it
            token = token.get("accessToken") or token.get("credentialsId")
        if not token:
            raise RegisterError("ThingsBoard said SUCCESS but sent no access token")
        return str(token)
    if status == "SUCCESS":
        raise RegisterError(f"ThingsBoard issued {reply.get('credentialsType')} credentials; "
                            "only ACCESS_TOKEN is supported: set the device profile so")
    if status == "NOT_FOUND":
        raise RegisterError("ThingsBoard does not know this provision key (NOT_FOUND): check "
                            "provision_key / provision_secret against the device profile")
    raise RegisterError(f"ThingsBoard refused provisioning ({status}): {reply.get('errorMsg', '')}".rstrip(": "))
