# ThingsBoard gateway API (PLATFORMS.md; thingsboard.io/docs/reference/gateway-mqtt-api/): one
# connection for several devices. The one place its topics are declared.
from uplink.platforms import Command, command, dumps, loads_obj, too_big

GW_TELEMETRY = "v1/gateway/telemetry"
GW_CONNECT = "v1/gateway/connect"
GW_DISCONNECT = "v1/gateway/disconnect"
GW_RPC = "v1/gateway/rpc"
GW_ATTRIBUTES = "v1/gateway/attributes"
GW_ATTR_REQUEST = "v1/gateway/attributes/request"
GW_ATTR_RESPONSE = "v1/gateway/attributes/response"
GW_CLAIM = "v1/gateway/claim"


class Gateway:
    """The gateway part of a ThingsBoard adapter (adapter.gateway), for platform.gateway_devices.

    An optional part of an adapter is an object of a class in its own module, made by the
    adapter on first need (a gateway: in __init__, when the config asks for one), holding its
    adapter and using only the adapter's public names. A device that does not use the part
    never imports its module: on an ESP32 every module's bytecode lives in the heap."""

    def __init__(self, adapter, devices):
        self.adapter = adapter
        self.devices = devices  # the sub-devices' names, announced at every connect
        self.offline = []  # those uplink.cloud.disconnect_device said are gone: not announced

    def subscriptions(self):
        return [(GW_RPC, 1), (GW_ATTRIBUTES, 1), (GW_ATTR_RESPONSE, 1)]

    async def on_connect(self, client):
        for name in self.devices:
            if name not in self.offline:
                await client.publish(GW_CONNECT, dumps({"device": name}).encode(), 1, False, False)

    # -- what uplink.cloud asks for a sub-device (gateway-mqtt-api: the topics and shapes) ----
    def presence(self, device, online):
        """(topic, payload) saying `device` is connected to the gateway or gone from it."""
        if online:
            if device in self.offline:
                self.offline.remove(device)
        elif device not in self.offline:
            self.offline.append(device)
        return (GW_CONNECT if online else GW_DISCONNECT, dumps({"device": device}).encode())

    def attributes_message(self, device, values):
        return (GW_ATTRIBUTES, dumps({device: values}).encode())

    def attributes_request(self, device, keys, client):
        """One request: the device's client (or shared) attributes `keys`; the answer comes
        back on v1/gateway/attributes/response with the request's id."""
        rid = self.adapter.next_id("gw")
        return (GW_ATTR_REQUEST, dumps({"id": rid, "device": device, "client": client, "keys": keys}).encode())

    def claim_request(self, device, secret_key, duration_ms):
        return (GW_CLAIM, dumps({device: {"secretKey": secret_key, "durationMs": duration_ms}}).encode())

    def encode_run(self, readings, i, out):
        # {"A":[{"ts":..,"values":{..}}, ...], "B":[...]} for a run of sub-device readings; a
        # sub-device's uplink.cloud attribute record (k "a") on its own
        r = readings[i]
        if r.get("k") == "a":
            t, payload = self.attributes_message(r["device"], r["values"])
            out.append((t, payload, 1) if len(payload) <= self.adapter.max_payload - len(t) - 4
                       else too_big(1, len(payload), self.adapter.max_payload))
            return i + 1
        adapter = self.adapter
        limit = adapter.max_payload
        room = limit - len(GW_TELEMETRY) - 4
        groups = {}  # device -> [pieces]
        order = []
        size = 2
        count = 0
        n = len(readings)
        while i < n:
            r = readings[i]
            dev = r.get("device")
            if dev is None or "k" in r:
                break
            piece = adapter.piece(r)
            extra = len(piece)
            if dev in groups:
                extra += 1
            else:
                extra += len(dumps(dev)) + 3 + (1 if order else 0)
            if size + extra > room:
                if count:
                    break
                out.append(too_big(1, size + extra, limit))
                return i + 1
            if dev not in groups:
                groups[dev] = []
                order.append(dev)
            groups[dev].append(piece)
            size += extra
            count += 1
            i += 1
        parts = []
        for dev in order:
            parts.append(dumps(dev) + ":[" + ",".join(groups[dev]) + "]")
        out.append((GW_TELEMETRY, ("{" + ",".join(parts) + "}").encode(), count))
        return i

    def handle(self, topic, payload):
        """A downlink on the gateway's topics as a Command, else None."""
        if topic == GW_RPC:
            req = loads_obj(payload, "gateway RPC")
            if "id" in req:
                # A reply's shape ({"device", "id", "data"}): ours, handed back by a plain broker
                # (uplink sim on mosquitto). ThingsBoard puts a request's id inside "data"
                # (thingsboard.io/docs/reference/gateway-mqtt-api/, "Server-side RPC").
                return None
            dev, data = _gw(req, "gateway RPC")
            method = data.get("method")
            if not isinstance(method, str) or not method:
                raise ValueError("gateway RPC for %s: no method" % dev)
            return command(method, data.get("params"), ("gw", data.get("id")), dev)
        if topic == GW_ATTRIBUTES:
            dev, data = _gw(loads_obj(payload, "gateway attributes"), "gateway attributes")
            return Command("attributes", data, None, dev)
        if topic == GW_ATTR_RESPONSE:
            resp = loads_obj(payload, "gateway attributes response")
            w = self.adapter.waiter  # an answer to uplink.cloud.get_attributes(device=...)
            if isinstance(resp.get("id"), int) and w is not None and w(resp["id"], payload):
                return None
            dev = resp.get("device")
            if not isinstance(dev, str):
                raise ValueError("gateway attributes response: no device")
            if "values" in resp and isinstance(resp["values"], dict):
                return Command("attributes", resp["values"], None, dev)
            if "key" in resp:
                return Command("attributes", {resp["key"]: resp.get("value")}, None, dev)
            return None
        return None

    def reply(self, cmd, result):
        """The answer to a sub-device's RPC (reply_to ("gw", id))."""
        return (GW_RPC, dumps({"device": cmd.device, "id": cmd.reply_to[1],
                               "data": {} if result is None else result}).encode())


def _gw(req, what):
    dev, data = req.get("device"), req.get("data")
    if not isinstance(dev, str) or not dev:
        raise ValueError("%s: no device" % what)
    if not isinstance(data, dict):
        raise ValueError("%s for %s: 'data' is not an object" % (what, dev))
    return dev, data
