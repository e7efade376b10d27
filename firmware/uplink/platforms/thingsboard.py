# ThingsBoard (self-hosted or ThingsBoard Cloud), MQTT device API and gateway API.
# Wire contract: PLATFORMS.md "ThingsBoard". Token as username, no password.
import asyncio

from uplink.config import ConfigError
from uplink.platforms import (
    Command,
    Credentials,
    client_id,
    command,
    ctx_ip,
    dumps,
    loads_obj,
    maybe_await,
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
}

ME = "v1/devices/me/"
TELEMETRY = ME + "telemetry"
ATTRIBUTES = ME + "attributes"
ATTR_REQUEST = ME + "attributes/request/"
ATTR_RESPONSE = ME + "attributes/response/"
RPC_REQUEST = ME + "rpc/request/"
RPC_RESPONSE = ME + "rpc/response/"
CLAIM = ME + "claim"
GW = "v1/gateway/"
GW_TELEMETRY = GW + "telemetry"
GW_CONNECT = GW + "connect"
GW_RPC = GW + "rpc"
GW_ATTRIBUTES = GW + "attributes"
GW_ATTR_RESPONSE = GW + "attributes/response"
PROVISION_REQUEST = "/provision/request"
PROVISION_RESPONSE = "/provision/response"
PROVISION_TIMEOUT_S = 30


class ProvisionError(ConfigError):
    # The server refused: as with a config mistake, retrying the same request cannot help,
    # so the app stops in safe mode with the reason. No answer at all is an OSError instead
    # (a network matter: the app resets and tries again).
    pass


class Adapter:
    def __init__(self, cfg, ctx):
        p = cfg["platform"]
        self.cfg = cfg
        self.ctx = ctx
        self.url = platform_url(cfg, DEFAULT_URL)
        self.client_id = client_id(cfg)
        self.max_payload = p.get("max_payload") or DEFAULT_MAX_PAYLOAD
        self.gateway = p.get("gateway_devices") or []
        self.shared_keys = p.get("shared_attributes") or []
        self._creds = Credentials(p, (None, None))
        if not p.get("token") and not self._creds.configured and not self.needs_provisioning():
            raise ConfigError("config.json: platform.token: missing: give the device's access token, "
                              "or provision_key and provision_secret to provision it on first boot")
        self._rpc_id = 0
        self._pending = {}  # client-side RPC / attribute request id -> method
        self._claimed = False
        self.provision_timeout_s = PROVISION_TIMEOUT_S

    # -- connecting ----------------------------------------------------------------------
    def needs_provisioning(self):
        p = self.cfg["platform"]
        return (not p.get("token") and p.get("credentials") is None
                and bool(p.get("provision_key")) and bool(p.get("provision_secret")))

    async def prepare(self, opener):
        """First-boot device provisioning; a no-op once the config holds a token.

        opener: the app (its `open_client` method) or the coroutine function itself:
        `await open_client(user, password)` -> a connected MQTTClient (one attempt, no retry)
        to this adapter's url with its client_id. The token received is stored with
        ctx.save_config(cfg); credentials() returns it from then on."""
        if not self.needs_provisioning():
            return
        open_client = getattr(opener, "open_client", None)
        if open_client is None:
            open_client = opener if callable(opener) else self._open_client
        p = self.cfg["platform"]
        got = asyncio.Event()
        answer = []

        def on_message(topic, payload, retained):
            if topic == PROVISION_RESPONSE and not answer:
                answer.append(payload)
                got.set()

        client = await open_client("provision", None)  # type: ignore
        try:
            client.on_message = on_message
            await client.subscribe(PROVISION_RESPONSE, 1)
            await client.publish(PROVISION_REQUEST, dumps({
                "deviceName": self.cfg["device"]["name"],
                "provisionDeviceKey": p["provision_key"],
                "provisionDeviceSecret": p["provision_secret"]}).encode(), 1)
            try:
                await asyncio.wait_for(got.wait(), self.provision_timeout_s)
            except asyncio.TimeoutError:
                raise OSError("provisioning: no answer on %s within %d s"
                                     % (PROVISION_RESPONSE, self.provision_timeout_s))
        finally:
            try:
                await client.disconnect()
            except Exception:
                pass
        token = parse_provision_response(answer[0])
        p["token"] = token
        await maybe_await(self.ctx.save_config(self.cfg))

    async def _open_client(self, user, password):
        # used when the app offers no open_client of its own
        from uplink.mqtt import MQTTClient

        p = self.cfg["platform"]
        ca = None
        if p.get("ca"):
            with open(p["ca"], "rb") as f:
                ca = f.read()
        c = MQTTClient(self.url, self.client_id, user=user, password=password,
                       keepalive=p.get("keepalive") or 60, ca=ca, insecure=bool(p.get("insecure")))
        await c.connect()
        return c

    async def credentials(self):
        if self._creds.configured:
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
        for method in ("getSessionLimits", "getTime"):
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
            if self.gateway and readings[i].get("device") is not None:
                i = self._encode_gateway(readings, i, out)
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

    def _encode_gateway(self, readings, i, out):
        # {"A":[{"ts":..,"values":{..}}, ...], "B":[...]} for a run of sub-device readings
        limit = self.max_payload
        room = limit - len(GW_TELEMETRY) - 4
        groups = {}  # device -> [pieces]
        order = []
        size = 2
        count = 0
        n = len(readings)
        while i < n:
            r = readings[i]
            dev = r.get("device")
            if dev is None:
                break
            piece = self._piece(r)
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
            return Command("attributes", loads_obj(payload, "shared attributes"))
        if topic.startswith(ATTR_RESPONSE):
            _id(topic, ATTR_RESPONSE)
            resp = loads_obj(payload, "attributes response")
            shared = resp.get("shared") or {}
            if not isinstance(shared, dict):
                raise ValueError("attributes response: 'shared' is not an object")
            return Command("attributes", shared)
        if topic.startswith(RPC_RESPONSE):
            return self._rpc_answer(_id(topic, RPC_RESPONSE), payload)
        if topic == GW_RPC:
            req = loads_obj(payload, "gateway RPC")
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
            dev = resp.get("device")
            if not isinstance(dev, str):
                raise ValueError("gateway attributes response: no device")
            if "values" in resp and isinstance(resp["values"], dict):
                return Command("attributes", resp["values"], None, dev)
            if "key" in resp:
                return Command("attributes", {resp["key"]: resp.get("value")}, None, dev)
            return None
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
            self.max_payload = size
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


def _id(topic, prefix):
    rid = topic[len(prefix):]
    try:
        v = int(rid)
    except ValueError:
        raise ValueError("%s: request id %r is not a number" % (topic, rid))
    return v


def _gw(req, what):
    dev, data = req.get("device"), req.get("data")
    if not isinstance(dev, str) or not dev:
        raise ValueError("%s: no device" % what)
    if not isinstance(data, dict):
        raise ValueError("%s for %s: 'data' is not an object" % (what, dev))
    return dev, data


def parse_provision_response(payload):
    try:
        ans = loads_obj(payload, "provision response")
    except ValueError as e:
        raise ProvisionError(str(e))
    status = ans.get("status")
    if status == "SUCCESS":
        if ans.get("credentialsType", "ACCESS_TOKEN") != "ACCESS_TOKEN":
            raise ProvisionError("provisioning gave %s credentials; only ACCESS_TOKEN is supported"
                                 % ans.get("credentialsType"))
        token = ans.get("credentialsValue")
        if not isinstance(token, str) or not token:
            raise ProvisionError("provisioning: SUCCESS without a token")
        return token
    if status == "NOT_FOUND":
        raise ProvisionError("provisioning refused: NOT_FOUND (no device profile has this "
                             "provision_key/provision_secret)")
    raise ProvisionError("provisioning refused: %s %s" % (status, ans.get("errorMsg", "")))
