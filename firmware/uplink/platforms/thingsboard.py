# ThingsBoard (self-hosted or ThingsBoard Cloud), MQTT device API and gateway API.
# Wire contract: PLATFORMS.md "ThingsBoard". Token as username, no password.
from uplink.config import ConfigError
from uplink.platforms import (
    Base,
    Command,
    client_id,
    command,
    credential_source,
    dumps,
    loads_obj,
    platform_url,
    too_big,
)

DEFAULT_URL = "mqtts://mqtt.thingsboard.cloud:8883"
DEFAULT_MAX_PAYLOAD = 65536

SCHEMA = {
    "token": (str, None),
    "provision_key": (str, None),
    "provision_secret": (str, None),
    "gateway_devices": ([str], None),
    "shared_attributes": ([str], []),
    "claim_secret": (str, None),
    "claim_duration_ms": (int, 60000, lambda v: v > 0 or "a number above 0"),
    "max_payload": (int, DEFAULT_MAX_PAYLOAD, lambda v: v >= 256 or "at least 256"),
    # getSessionLimits/getTime after connect; off for servers older than ThingsBoard 3.5,
    # or a plain broker that echoes a device's requests back to it (make demo)
    "client_rpc": (bool, True),
}

ME = "v1/devices/me/"
TELEMETRY = ME + "telemetry"
ATTRIBUTES = ME + "attributes"
ATTR_REQUEST = ME + "attributes/request/"
ATTR_RESPONSE = ME + "attributes/response/"
RPC_REQUEST = ME + "rpc/request/"
RPC_RESPONSE = ME + "rpc/response/"
CLAIM = ME + "claim"
FW_RESPONSE = "v2/fw/response/"
GW = "v1/gateway/"
GW_TELEMETRY = GW + "telemetry"
GW_CONNECT = GW + "connect"
GW_RPC = GW + "rpc"
GW_ATTRIBUTES = GW + "attributes"
GW_ATTR_RESPONSE = GW + "attributes/response"


class Adapter(Base):
    def __init__(self, cfg, ctx):
        p = cfg["platform"]
        self.cfg = cfg
        self.ctx = ctx
        self.url = platform_url(cfg, DEFAULT_URL)
        self.client_id = client_id(cfg)
        self.max_payload = p.get("max_payload") or DEFAULT_MAX_PAYLOAD
        self.gateway = p.get("gateway_devices") or []
        self._gw = None
        if self.gateway:  # the gateway API's code is loaded only by gateways
            from uplink.platforms import tb_gateway

            self._gw = tb_gateway
        self.shared_keys = p.get("shared_attributes") or []
        self._creds = credential_source(p)
        if not p.get("token") and self._creds is None and not self.needs_provisioning():
            raise ConfigError("config.json: platform.token: missing: give the device's access token, "
                              "or provision_key and provision_secret to provision it on first boot")
        self._rpc_id = 0
        self._pending = {}  # client-side RPC / attribute request id -> method
        self._claimed = False
        self.provision_timeout_s = 30

    # -- connecting ----------------------------------------------------------------------
    def needs_provisioning(self):
        p = self.cfg["platform"]
        return (not p.get("token") and p.get("credentials") is None
                and bool(p.get("provision_key")) and bool(p.get("provision_secret")))

    async def prepare(self, opener):
        """First-boot device provisioning (uplink.platforms.tb_provision, imported only then);
        a no-op once the config holds a token. See docs/internals.md."""
        if self.needs_provisioning():
            from uplink.platforms import tb_provision

            await tb_provision.provision(self, opener)

    async def credentials(self):
        if self._creds is not None:
            return await self._creds()
        return (self.cfg["platform"]["token"], None)

    def subscriptions(self):
        subs = [(ATTRIBUTES, 1), (ATTR_RESPONSE + "+", 1), (RPC_REQUEST + "+", 1),
                (RPC_RESPONSE + "+", 1)]
        if self.gateway:
            subs += [(GW_RPC, 1), (GW_ATTRIBUTES, 1), (GW_ATTR_RESPONSE, 1)]
        return subs

    async def on_connect(self, client):
        attrs = {"fw_version": self.ctx.version, "board": self.ctx.board.name}
        ip = ctx_ip(self.ctx)
        if ip:
            attrs["ip"] = ip
        # QoS 1 without waiting for each PUBACK: the client pipelines them
        await client.publish(ATTRIBUTES, dumps(attrs).encode(), 1, False, False)
        self._pending = {}
        for method in ("getSessionLimits", "getTime") if self.cfg["platform"].get("client_rpc", True) else ():
            t, payload = self.rpc_request(method)
            await client.publish(t, payload, 1, False, False)
        if self.shared_keys:
            t, payload = self.attributes_request(shared=self.shared_keys)
            await client.publish(t, payload, 1, False, False)
        for name in self.gateway:
            await client.publish(GW_CONNECT, dumps({"device": name}).encode(), 1, False, False)
        secret = self.cfg["platform"].get("claim_secret")
        if secret and not self._claimed:
            t, payload = self.claim_request(secret, self.cfg["platform"].get("claim_duration_ms") or 60000)
            await client.publish(t, payload, 1, False, False)
            self._claimed = True

    # -- requests the device makes ---------------------------------------------------------
    def _next_id(self, method):
        self._rpc_id += 1
        if len(self._pending) >= 8:  # bounded: answers that never came are forgotten
            self._pending = {}
        self._pending[self._rpc_id] = method
        return self._rpc_id

    def rpc_request(self, method, params=None):
        """Client-side RPC: (topic, payload); the answer comes back through handle()."""
        rid = self._next_id(method)
        return (RPC_REQUEST + str(rid),
                dumps({"method": method, "params": {} if params is None else params}).encode())

    def attributes_request(self, client=None, shared=None):
        """(topic, payload) asking for attribute values; answered as Command("attributes")."""
        rid = self._next_id("attributes")
        req = {}
        if client:
            req["clientKeys"] = ",".join(client)
        if shared:
            req["sharedKeys"] = ",".join(shared)
        return (ATTR_REQUEST + str(rid), dumps(req).encode())

    def claim_request(self, secret_key, duration_ms=60000):
        return (CLAIM, dumps({"secretKey": secret_key, "durationMs": duration_ms}).encode())

    # -- telemetry -------------------------------------------------------------------------
    def encode(self, readings):
        out = []
        i, n = 0, len(readings)
        while i < n:
            if self._gw is not None and readings[i].get("device") is not None:
                i = self._gw.encode_run(self, readings, i, out)
            else:
                i = self._encode_me(readings, i, out)
        return out

    def _piece(self, r):
        if r.get("ts") is None:
            return dumps(r["values"])
        return dumps({"ts": r["ts"], "values": r["values"]})

    def _encode_me(self, readings, i, out):
        # one reading: the object itself; several: one JSON array (TB stores each with its ts)
        limit = self.max_payload
        room = limit - len(TELEMETRY) - 4
        pieces = []
        size = 2  # the array's brackets
        n = len(readings)
        while i < n:
            r = readings[i]
            if self.gateway and r.get("device") is not None:
                break
            piece = self._piece(r)
            if len(piece) > room:
                if pieces:
                    break
                out.append(too_big(1, len(piece), limit))
                return i + 1
            if pieces and size + len(piece) + 1 > room:
                break
            size += len(piece) + (1 if pieces else 0)
            pieces.append(piece)
            i += 1
        payload = pieces[0] if len(pieces) == 1 else "[" + ",".join(pieces) + "]"
        out.append((TELEMETRY, payload.encode(), len(pieces)))
        return i

    # -- downlink --------------------------------------------------------------------------
    def handle(self, topic, payload, retained):
        if topic.startswith(RPC_REQUEST):
            rid = _id(topic, RPC_REQUEST)
            req = loads_obj(payload, "RPC request")
            method = req.get("method")
            if not isinstance(method, str) or not method:
                raise ValueError("RPC request %s: no method" % rid)
            return command(method, req.get("params"), ("me", rid))
        if topic == ATTRIBUTES:
            return _shared(loads_obj(payload, "shared attributes"))
        if topic.startswith(ATTR_RESPONSE):
            _id(topic, ATTR_RESPONSE)
            resp = loads_obj(payload, "attributes response")
            shared = resp.get("shared") or {}
            if not isinstance(shared, dict):
                raise ValueError("attributes response: 'shared' is not an object")
            return _shared(shared)
        if topic.startswith(RPC_RESPONSE):
            return self._rpc_answer(_id(topic, RPC_RESPONSE), payload)
        if topic.startswith(FW_RESPONSE):  # an OTA chunk: to uplink.ota_tb, straight to flash
            ota = getattr(self.ctx, "ota", None)
            if ota is not None:
                ota.on_chunk(topic, payload)
            return None
        if self._gw is not None and topic.startswith(GW):
            return self._gw.handle(topic, payload)
        return None

    def _rpc_answer(self, rid, payload):
        method = self._pending.pop(rid, None)
        if method is None:
            return None
        ans = loads_obj(payload, method + " answer")
        if method == "getSessionLimits":
            size = ans.get("maxPayloadSize")
            if not isinstance(size, int) or isinstance(size, bool) or size < 256:
                raise ValueError("getSessionLimits answer: bad maxPayloadSize %r" % (size,))
            # the server's limit can only lower ours (platform.max_payload also guards the heap)
            self.max_payload = min(size, self.cfg["platform"].get("max_payload") or DEFAULT_MAX_PAYLOAD)
            return None
        if method == "getTime":
            ms = ans.get("serverTime")
            if not isinstance(ms, int) or isinstance(ms, bool) or ms <= 0:
                raise ValueError("getTime answer: bad serverTime %r" % (ms,))
            return Command("set_time", {"ms": ms})
        return Command("rpc_answer", {"method": method, "result": ans})

    def reply(self, cmd, result):
        to = cmd.reply_to
        if not to:
            return None
        if to[0] == "me":
            return (RPC_RESPONSE + str(to[1]), dumps({} if result is None else result).encode())
        if to[0] == "gw":
            return (GW_RPC, dumps({"device": cmd.device, "id": to[1],
                                   "data": {} if result is None else result}).encode())
        return None


def _shared(attrs):
    # fw_title + fw_version: ThingsBoard announcing a firmware OTA (uplink.ota_tb)
    return Command("ota" if "fw_title" in attrs and "fw_version" in attrs else "attributes", attrs)


def _id(topic, prefix):
    rid = topic[len(prefix):]
    try:
        v = int(rid)
    except ValueError:
        raise ValueError("%s: request id %r is not a number" % (topic, rid))
    return v


def ctx_ip(ctx):
    """The board's IP address from the app context (ctx.ip, or ctx.wifi.ip), or None."""
    ip = getattr(ctx, "ip", None)
    if ip is None:
        ip = getattr(getattr(ctx, "wifi", None), "ip", None)
    if callable(ip):
        ip = ip()
    return ip
