# The cloud's own features for user.py (docs/user_api.md): ask the server, be told of changes,
# say things that are not readings. Imported only by a user.py that uses it (its bytecode
# lives in the heap); the app attaches itself once it runs (App.main -> attach).
#
#   from uplink import cloud
#   cloud.on_change(fn)                      fn(values): shared attributes / datastream writes
#   await cloud.rpc("getWeather", {...})     ThingsBoard client-side RPC, the answer
#   await cloud.get_attributes(client=[..], shared=[..])
#   await cloud.claim(secret, duration_ms)   ThingsBoard device claiming
#   await cloud.set_attributes({...})        ThingsBoard client attributes (outbox)
#   ... get_attributes, claim, set_attributes with device="A": a gateway's sub-device
#   await cloud.connect_device("A") / disconnect_device("A")   ThingsBoard gateway
#   await cloud.event(code, description)     Blynk log event (outbox)
#   await cloud.prop(datastream, prop, v)    Blynk widget property (now, or not at all)
#   await cloud.meta(field)                  Blynk metadata value
#
# Reliability: what must not be lost (events, client attributes) goes through the outbox like
# a reading, PUBACK and all; a question goes out at QoS 0 and times out with Timeout (a lost
# question is one that was not answered). Pending questions sit in a fixed table of SLOTS.
import asyncio
import json
import time

from uplink import log

TYPE_CHECKING = False
if TYPE_CHECKING:  # names for the type checker only; MicroPython ignores annotations
    from typing import Any

SLOTS = 4  # questions waiting at once
MAX_CHANGES = 32  # distinct names waiting for the on_change callback; more are dropped


class CloudError(Exception):
    pass


class NotSupported(CloudError):
    pass


class Timeout(CloudError):
    pass


_app: Any = None
_cb: Any = None
_keys: Any = None
_changes = {}
_wake: Any = None
_key: Any = [None] * SLOTS  # what a slot waits for: a ThingsBoard request id, a Blynk meta field
_val: Any = [None] * SLOTS
_ev: Any = [None] * SLOTS
NAMES = {"thingsboard": "ThingsBoard", "blynk": "Blynk", "weightron": "Weightron", "biotz": "Biotz"}


# -- the app's side --------------------------------------------------------------------------
def attach(app):
    """Called by the app once its adapter, client and outbox exist."""
    global _app
    _app = app
    for kind, adapter, client in sessions():
        adapter.waiter = _answer
    if _cb is not None:
        _start()


def sessions():
    """(platform kind, adapter, MQTT client) of every session: the one place that knows how
    the app holds them (the main cloud first, then uplink.sessions' others)."""
    a = _app
    if a is None or a.adapter is None:
        return []
    out = [(a.cfg["platform"]["kind"], a.adapter, a.client)]
    more = a.sessions  # the device's other clouds (uplink.sessions), or None
    if more is not None:
        out += [(x.cfg["platform"]["kind"], x.adapter, x.client) for x in more.extra]
    return out


async def connected(adapter, client):
    """After every (re)connect of a session: ask for the current values on_change is owed."""
    if _cb is None:
        return
    api = adapter.cloud_api()
    r = api.sync_request(_keys) if api is not None else None
    if r is not None:
        await client.publish(r[0], r[1], 0)


def take(cmd):
    """A downlink turned command: True when it is a change for on_change (taken here)."""
    if _cb is None or cmd.device is not None:
        return False
    p = cmd.params
    if cmd.name == "attributes" and "client" not in p:
        vals = p
    elif cmd.name == "write":  # Blynk datastream write
        vals = {p["name"]: p["value"]}
    elif cmd.name == "watch":  # Weightron: another device's value
        vals = {p["topic"]: p["value"]}
    else:
        return False
    for k in vals:
        if k in _changes or len(_changes) < MAX_CHANGES:
            _changes[k] = vals[k]
        else:
            log.warn("cloud", "change of %s dropped: %d changes wait already" % (k, MAX_CHANGES))
    if _wake is not None:
        _wake.set()
    return True


def _answer(key, payload):
    # adapter.waiter: an answer to a question of ours, by request id or meta field
    for i in range(SLOTS):
        if _key[i] == key and _ev[i] is not None:
            _val[i] = bytes(payload)
            _ev[i].set()
            return True
    return False


def _start():
    global _wake
    if _wake is None:
        _wake = asyncio.Event()
        asyncio.create_task(_dispatch())
    if _changes:
        _wake.set()


async def _dispatch():
    global _changes
    while True:
        await _wake.wait()
        _wake.clear()
        while _changes:
            vals = _changes
            _changes = {}
            try:
                r = _cb(vals)
                if r is not None and hasattr(r, "send"):
                    await r
            except Exception as e:  # the user's callback must not end the deliveries
                log.exc("cloud", "on_change callback failed", e)


# -- user.py's side ----------------------------------------------------------------------------
def on_change(callback, keys=None):
    """callback(values) with {name: value} for ThingsBoard shared-attribute updates, Blynk
    datastream writes and Weightron watched values; the current values once after every
    (re)connect. keys: the names to ask for then (ThingsBoard shared attributes beyond
    platform.shared_attributes; Blynk datastreams, else get/ds/all). May be async."""
    global _cb, _keys
    _cb = callback
    _keys = keys
    if _app is not None:
        _start()


def _session(feature, kind):
    # each feature is one cloud's own: the first session on a `kind` cloud, its cloud API part
    for k, adapter, client in sessions():
        if k == kind:
            return adapter.cloud_api(), client
    if _app is None:
        raise CloudError("%s: the app is not running yet (call it from handle(), a callback or a task)" % feature)
    kind = sessions()[0][0] if sessions() else "?"
    raise NotSupported("%s has no %s" % (NAMES.get(kind, kind), feature))


async def _ask(key, topic, payload, timeout_s, what, client):
    i = 0
    while i < SLOTS and _key[i] is not None:
        i += 1
    if i == SLOTS:
        raise CloudError("%s: %d questions wait for answers already" % (what, SLOTS))
    if _ev[i] is None:
        _ev[i] = asyncio.Event()
    ev = _ev[i]
    ev.clear()
    _key[i] = key
    _val[i] = None
    t0 = time.ticks_ms()
    ms = int(timeout_s * 1000)
    try:
        while not client.is_connected:  # a question is only worth asking on a live link
            if time.ticks_diff(time.ticks_ms(), t0) >= ms:
                raise Timeout("%s: not connected to the cloud within %s s" % (what, timeout_s))
            await asyncio.sleep_ms(100)
        await client.publish(topic, payload, 0)
        left = ms - time.ticks_diff(time.ticks_ms(), t0)
        try:
            await asyncio.wait_for_ms(ev.wait(), max(left, 1))
        except asyncio.TimeoutError:
            raise Timeout("%s: no answer within %s s" % (what, timeout_s))
        return _val[i]
    finally:
        _key[i] = None
        _val[i] = None


def _parse(raw):
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode()


async def rpc(method, params=None, timeout_s=10):
    """ThingsBoard client-side RPC: the server's answer (any JSON; text if not JSON). A rule
    chain must answer it (thingsboard.io/docs/user-guide/rpc/, client-side RPC)."""
    api, client = _session("client-side RPC", "thingsboard")
    topic, payload = api.rpc_request(method, params)
    raw = await _ask(_rid(topic), topic, payload, timeout_s, "RPC %s" % method, client)
    return _parse(raw)


def _gateway(feature, device):
    # a ThingsBoard gateway's part (platform.gateway_devices) and client, for `device`
    api, client = _session(feature, "thingsboard")
    if api.gateway is None:
        raise NotSupported("%s for device %r: this device is no ThingsBoard gateway (platform.gateway_devices)"
                           % (feature, device))
    if not isinstance(device, str) or not device:
        raise ValueError("%s: device must be a sub-device's name" % feature)
    return api.gateway, client


async def _gw_attributes(device, keys, scope, timeout_s):
    gw, c = _gateway("attribute requests", device)
    topic, payload = gw.attributes_request(device, list(keys), scope == "client")
    rid = json.loads(payload)["id"]
    ans = _parse(await _ask(rid, topic, payload, timeout_s, "attribute request for %s" % device, c))
    if isinstance(ans, dict) and isinstance(ans.get("values"), dict):
        return ans["values"]
    if isinstance(ans, dict) and "value" in ans and len(keys) == 1:  # one key: ThingsBoard says "value"
        return {keys[0]: ans["value"]}
    raise CloudError("attribute request for %s: the answer has no values" % device)


async def get_attributes(client=None, shared=None, timeout_s=10, device=None):
    """ThingsBoard attribute request: {"client": {...}, "shared": {...}}; device: a gateway's
    sub-device's (one request per scope, gateway-mqtt-api)."""
    if not client and not shared:
        raise ValueError("get_attributes: name client and/or shared attribute keys")
    if device is not None:
        return {"client": await _gw_attributes(device, client, "client", timeout_s) if client else {},
                "shared": await _gw_attributes(device, shared, "shared", timeout_s) if shared else {}}
    api, c = _session("attribute requests", "thingsboard")
    topic, payload = api.attributes_request(client, shared)
    ans = _parse(await _ask(_rid(topic), topic, payload, timeout_s, "attribute request", c))
    if not isinstance(ans, dict):
        raise CloudError("attribute request: the answer is not an object")
    return {"client": ans.get("client") or {}, "shared": ans.get("shared") or {}}


async def claim(secret, duration_ms=60000, timeout_s=30, device=None):
    """ThingsBoard device claiming: the secret a user then enters to claim the device (or a
    gateway's sub-device), valid duration_ms. Sent once connected (QoS 1); Timeout when the
    link is not up in time."""
    if device is not None:
        gw, client = _gateway("device claiming", device)
        topic, payload = gw.claim_request(device, secret, duration_ms)
    else:
        api, client = _session("device claiming", "thingsboard")
        topic, payload = api.claim_request(secret, duration_ms)
    await _send(client, topic, payload, timeout_s, "claim")


async def _send(client, topic, payload, timeout_s, what):
    try:
        await asyncio.wait_for(client.publish(topic, payload, 1), timeout_s)
    except asyncio.TimeoutError:
        raise Timeout("%s: not sent within %s s (no connection)" % (what, timeout_s))


async def connect_device(device, timeout_s=30):
    """ThingsBoard gateway: sub-device `device` is connected (announced after every connect
    from now on, as platform.gateway_devices are)."""
    gw, client = _gateway("connect_device", device)
    topic, payload = gw.presence(device, True)
    await _send(client, topic, payload, timeout_s, "connect_device")


async def disconnect_device(device, timeout_s=30):
    """ThingsBoard gateway: sub-device `device` is gone (no longer announced after a
    reconnect, until connect_device)."""
    gw, client = _gateway("disconnect_device", device)
    topic, payload = gw.presence(device, False)
    await _send(client, topic, payload, timeout_s, "disconnect_device")


async def set_attributes(values, device=None):
    """ThingsBoard client attributes (a gateway's sub-device's with device): stored in the
    outbox, sent like readings."""
    if device is not None:
        _gateway("client attributes", device)
    else:
        _session("client attributes", "thingsboard")
    if not isinstance(values, dict) or not values:
        raise ValueError("set_attributes: expected a non-empty dict")
    r = {"k": "a", "to": "thingsboard", "values": values}
    if device is not None:
        r["device"] = device
    _store(r)


async def event(code, description=""):
    """Blynk log event `code` (the template's event code) with an optional description:
    stored in the outbox, sent like a reading (notifications must not be lost)."""
    _session("log events", "blynk")
    if not isinstance(code, str) or not code or "/" in code or "+" in code or "#" in code:
        raise ValueError("event: bad event code %r" % (code,))
    _store({"k": "e", "to": "blynk", "code": code, "text": str(description)})


async def prop(datastream, name, value):
    """Blynk widget property (label, color, ...) of a datastream's widgets. A display state:
    sent now at QoS 0, or not at all (False when not connected); set it again from on_change,
    which runs after every reconnect."""
    api, client = _session("widget properties", "blynk")
    topic, payload = api.prop_message(datastream, name, value)
    if not client.is_connected:
        return False
    await client.publish(topic, payload, 0)
    return True


async def meta(field, timeout_s=10):
    """Blynk metadata value of `field` (text), as the template's metadata names it."""
    api, client = _session("metadata reads", "blynk")
    topic, payload = api.meta_request(field)
    return (await _ask(field, topic, payload, timeout_s, "metadata %s" % field, client)).decode()


def _rid(topic):
    return int(topic[topic.rfind("/") + 1:])


def _store(record):
    # outbox -> publisher -> adapter.encode, which sends a record with "k" as what it is, not
    # as a reading. Not app.store: a record that cannot be stored (too big, flash full) must
    # fail here, where user.py can act on it.
    a = _app
    a.outbox.put(json.dumps(record).encode())
    a.publisher.notify()
