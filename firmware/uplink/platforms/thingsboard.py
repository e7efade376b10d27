# ThingsBoard (self-hosted or ThingsBoard Cloud), MQTT device API. Wire contract:
# PLATFORMS.md "ThingsBoard". Token as username, no password. The gateway API is an optional
# part (tb_gateway.Gateway), loaded only by a gateway: bytecode lives in the heap.
import asyncio
from time import ticks_diff, ticks_ms

from uplink import log
from uplink.platforms import (
    Base,
    Command,
    Pack,
    command,
    dumps,
    loads,
    loads_obj,
    too_big,
)

DEFAULT_URL = "mqtts://mqtt.thingsboard.cloud:8883"
DEFAULT_MAX_PAYLOAD = 65536
LIMITS_WAIT_MS = 2000  # for getSessionLimits' answer before a connection's first reading

SCHEMA = {
    "token": (str, None),
    "provision_key": (str, None),
    "provision_secret": (str, None),
    # X.509 authentication (thingsboard.io/docs/user-guide/certificates/): the device's
    # certificate and private key, DER files on the board; then no token
    "client_cert": (str, None),
    "client_key": (str, None),
    "gateway_devices": ([str], None),
    "shared_attributes": ([str], []),
    "claim_secret": (str, None),
    "claim_duration_ms": (int, 60000, lambda v: v > 0 or "a number above 0"),
    "max_payload": (int, DEFAULT_MAX_PAYLOAD, lambda v: v >= 256 or "at least 256"),
    # getSessionLimits and the time (time_method) after connect; off for servers older than ThingsBoard 3.5
    # (a plain broker that hands them back is no reason: handle() knows its own requests)
    "client_rpc": (bool, True),
    # ThingsBoard has no stock time handler: its docs' rule-chain example answers the
    # client-side RPC "getCurrentTime" with new Date().getTime(), a bare number of ms
    # (thingsboard.io/docs/user-guide/rpc/, "Processing the client-side RPC by the platform").
    # A rule chain that answers with an object instead: name the key in time_key.
    "time_method": (str, "getCurrentTime"),
    "time_key": (str, None),
    # Largest packet the device takes from the broker (shared attributes, RPC): a bigger one
    # costs that much heap; what is over it is dropped.
    "max_downlink": (int, 4096, lambda v: v >= 256 or "at least 256"),
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
# OTA (thingsboard.io/docs/user-guide/ota-updates/): the shared attributes that announce a
# package, asked at every connect, and the topic its chunks come back on (uplink.ota_thingsboard)
FW_KEYS = ("fw_title", "fw_version", "fw_size", "fw_checksum", "fw_checksum_algorithm", "fw_url")
FW_CHUNKS = FW_RESPONSE + "+/chunk/+"


class Adapter(Base):
    HEALTH = True  # any telemetry key is stored: the health keys have room here
    # uplink.cloud's waiter(request id, payload) -> True when an answer was one of its questions
    waiter = None

    def __init__(self, cfg, ctx):
        Base.__init__(self, cfg, ctx, DEFAULT_URL, DEFAULT_MAX_PAYLOAD)
        p = cfg["platform"]
        self.max_packet = p.get("max_downlink") or 4096  # MQTTClient(max_packet=...)
        devices = p.get("gateway_devices")
        if devices:  # adapter.gateway: the part's code is loaded by a gateway only
            from uplink.platforms.tb_gateway import Gateway

            self.gateway = Gateway(self, devices)
        self.shared_keys = p.get("shared_attributes") or []
        if p.get("client_cert"):  # X.509: the certificate is the login
            self.require("client_key", "client_cert's private key")
        elif not self.needs_provisioning():
            self.require("token", "give the device's access token, an X.509 client_cert and client_key, or "
                         "provision_key and provision_secret to provision it on first boot")
        self._rpc_id = 0
        self._pending = {}  # client-side RPC / attribute request id -> method
        self._echoes = False  # the broker hands our own requests back (see handle)
        self._attrs = None  # the client attributes last sent (on_connect)
        self._replied = None  # then: the id of our last RPC reply, to be handed back too
        self._claimed = False
        # getSessionLimits: which connection (client.connections) the answer belongs to; the
        # connection it was asked on; set when it comes; False after a server left it unanswered
        self._limits_for = self._asked_on = 0
        self._limits = asyncio.Event()
        self._answers = True
        self.max_inflight = None
        self.limits = None  # the session's rate limits (tb_limits.Limits), when the server gave any
        self.provision_timeout_s = 30

    # -- connecting ----------------------------------------------------------------------
    def needs_provisioning(self):
        p = self.cfg["platform"]
        return (not p.get("token") and p.get("credentials") is None and not p.get("client_cert")
                and bool(p.get("provision_key")) and bool(p.get("provision_secret")))

    async def prepare(self, ctx):
        """First-boot device provisioning (uplink.platforms.tb_provision, imported only then);
        a no-op once the config holds a token. See docs/internals.md."""
        if self.needs_provisioning():
            from uplink.platforms import tb_provision

            await tb_provision.provision(self, tb_provision.opener(ctx))

    async def credentials(self):
        if self.creds is not None:
            return await self.creds()
        # X.509: the certificate is the login, the CONNECT carries no username
        return (self.cfg["platform"].get("token"), None)

    def subscriptions(self):
        subs = [(ATTRIBUTES, 1), (ATTR_RESPONSE + "+", 1), (RPC_REQUEST + "+", 1),
                (RPC_RESPONSE + "+", 1)]
        if self.gateway is not None:
            subs += self.gateway.subscriptions()
        if self.ctx.ota_watch:  # the main cloud's updates (Context.ota_watch)
            subs.append((FW_CHUNKS, 0))
        return subs

    async def on_connect(self, client):
        # the last session's limits pace this one until the server answers again (ready()):
        # ThingsBoard counts per device, across connections
        client.pace = self.limits
        attrs = {"board": self.ctx.board.name}
        ip = self.ctx.ip
        if ip:
            attrs["ip"] = ip
        self._attrs = dumps(attrs).encode()  # a plain broker hands it back (handle)
        # QoS 1 without waiting for each PUBACK: the client pipelines them
        await client.publish(ATTRIBUTES, self._attrs, 1, False, False)
        # The running firmware as telemetry, as ThingsBoard's OTA guide has the device send it
        # (thingsboard.io/docs/user-guide/ota-updates/, "Update process"; its firmware dashboard
        # reads these keys), at every connect: a device never updated shows its version too
        t, v = self._running()
        await client.publish(TELEMETRY, dumps({"current_fw_title": t, "current_fw_version": v}).encode(), 1, False,
                             False)
        self._pending = {}
        p = self.cfg["platform"]
        self._asked_on = client.connections
        methods = ("getSessionLimits", p.get("time_method") or "getCurrentTime")
        for method in methods if p.get("client_rpc", True) else ():
            t, payload = self.rpc_request(method)
            await client.publish(t, payload, 1, False, False)
        if self.shared_keys:
            t, payload = self.attributes_request(shared=self.shared_keys)
            await client.publish(t, payload, 1, False, False)
        if self.ctx.ota_watch:
            # a package assigned while we were away; the updater's code is loaded only when
            # the answer announces one (App.on_message)
            t, payload = self.attributes_request(shared=FW_KEYS, method="fw")
            await client.publish(t, payload, 1, False, False)
        if self.gateway is not None:
            await self.gateway.on_connect(client)
        secret = self.cfg["platform"].get("claim_secret")
        if secret and not self._claimed:
            t, payload = self.claim_request(secret, self.cfg["platform"].get("claim_duration_ms") or 60000)
            await client.publish(t, payload, 1, False, False)
            self._claimed = True

    async def ready(self, client):
        # The backlog waits up to LIMITS_WAIT_MS for getSessionLimits, then the documented
        # defaults apply (docs/platforms.md); a server that never answered is not waited for again.
        n = client.connections
        t = ticks_ms()
        asks = self.cfg["platform"].get("client_rpc", True) and self._answers
        while asks and self._limits_for != n and client.connections == n:
            left = LIMITS_WAIT_MS - ticks_diff(ticks_ms(), t)
            if left <= 0:
                self._answers = False
                log.warn("thingsboard", "the server did not say its session limits within %d ms: "
                         "ThingsBoard's defaults apply" % LIMITS_WAIT_MS)
                break
            self._limits.clear()
            try:
                await asyncio.wait_for_ms(self._limits.wait(), left)
            except asyncio.TimeoutError:
                pass
        lim = client.pace = self.limits  # every publish waits for its tokens (MQTTClient.publish)
        room = lim and lim.inflight()
        return min(room, self.max_inflight or room) if room else self.max_inflight

    def health_due(self):
        # under a data-point limit, not in every reading (tb_limits.Limits.health_due)
        return self.limits is None or self.limits.health_due()

    def _running(self):
        return self.ctx.fw()  # the running bundle's manifest (uplink.ota)

    def _shared(self, attrs):
        # fw_title + fw_version announce an OTA package (uplink.ota_thingsboard), unless it is
        # the one running: ThingsBoard keeps the fw_* attributes of the package last assigned,
        # and the updater is loaded for an announcement only (uplink.ota.take)
        if "fw_title" not in attrs or "fw_version" not in attrs:
            return Command("attributes", attrs)
        if (str(attrs["fw_title"]), str(attrs["fw_version"])) != tuple(self._running()):
            return Command("ota", attrs)
        return user_attributes(attrs)

    # -- requests the device makes ---------------------------------------------------------
    def next_id(self, method):
        """A request id, remembered as `method`'s (its answer is matched by it)."""
        self._rpc_id += 1
        if len(self._pending) >= 8:  # bounded: answers that never came are forgotten
            self._pending = {}
        self._pending[self._rpc_id] = method
        return self._rpc_id

    def rpc_request(self, method, params=None):
        """Client-side RPC: (topic, payload); the answer comes back through handle()."""
        rid = self.next_id(method)
        return (RPC_REQUEST + str(rid),
                dumps({"method": method, "params": {} if params is None else params}).encode())

    def attributes_request(self, client=None, shared=None, method="attributes"):
        """(topic, payload) asking for attribute values; answered as Command("attributes")
        (method "fw": an OTA announcement, or nothing)."""
        rid = self.next_id(method)
        req = {}
        if client:
            req["clientKeys"] = ",".join(client)
        if shared:
            req["sharedKeys"] = ",".join(shared)
        return (ATTR_REQUEST + str(rid), dumps(req).encode())

    def claim_request(self, secret_key, duration_ms=60000):
        return (CLAIM, dumps({"secretKey": secret_key, "durationMs": duration_ms}).encode())

    def attributes_message(self, values):
        """Client attributes: one JSON object to v1/devices/me/attributes (MQTT API,
        "Publish attribute update to the server")."""
        return (ATTRIBUTES, dumps(values).encode())

    def explain(self, event, detail):
        if event == "auth_error" and self.cfg["platform"].get("client_cert"):
            return "%s: most likely it refused the client certificate %s (expired, or not signed by a CA it " \
                "trusts)" % (detail, self.cfg["platform"]["client_cert"])
        return detail

    def cloud_api(self):
        """uplink.cloud's calls: the adapter's own (it sends these requests itself at every
        connect, so they are resident anyway; a part would only add a module)."""
        return self

    def sync_request(self, keys):
        """For uplink.cloud.on_change after a connect: ask the shared attributes `keys` that
        on_connect did not ask already (platform.shared_attributes), or None."""
        keys = [k for k in keys or () if k not in self.shared_keys]
        return self.attributes_request(shared=keys) if keys else None

    # -- telemetry -------------------------------------------------------------------------
    def encode(self, readings):
        out = []
        i, n = 0, len(readings)
        while i < n:
            k = readings[i].get("k")
            if self.gateway is not None and readings[i].get("device") is not None:
                i = self.gateway.encode_run(readings, i, out)  # (and its uplink.cloud records)
            elif k is not None:  # not a reading: an uplink.cloud record
                r = readings[i]
                if k == "a":
                    t, payload = self.attributes_message(r["values"])
                    out.append((t, payload, 1) if len(payload) <= self.max_payload - len(t) - 4
                               else too_big(1, len(payload), self.max_payload))
                else:
                    out.append((None, ("a %r record is not for ThingsBoard" % k).encode(), 1))
                i += 1
            else:
                i = self._encode_me(readings, i, out)
        return out

    def piece(self, r):
        """One reading as ThingsBoard takes it: {"ts", "values"}, or the values alone."""
        if r.get("ts") is None:
            return dumps(r["values"])
        return dumps({"ts": r["ts"], "values": r["values"]})

    def _encode_me(self, readings, i, out):
        # one reading: the object itself; several: one JSON array (TB stores each with its ts)
        limit = self.max_payload
        pack = Pack(limit - len(TELEMETRY) - 4)
        n = len(readings)
        while i < n:
            r = readings[i]
            if (self.gateway is not None and r.get("device") is not None) or "k" in r:
                break
            piece = self.piece(r)
            if len(piece) > pack.room:  # a lone object goes without the brackets
                if len(pack):
                    break
                out.append(too_big(1, len(piece), limit))
                return i + 1
            if pack.full_for(piece):
                break
            pack.add(piece)
            i += 1
        count = len(pack)
        out.append((TELEMETRY, pack.take(True).encode(), count))  # type: ignore
        return i

    # -- downlink --------------------------------------------------------------------------
    def handle(self, topic, payload, retained):
        if topic.startswith(RPC_REQUEST):
            rid = _id(topic, RPC_REQUEST)
            req = loads_obj(payload, "RPC request")
            method = req.get("method")
            if not isinstance(method, str) or not method:
                raise ValueError("RPC request %s: no method" % rid)
            if self._pending.get(rid) == method:
                # Our own request echoed by a plain broker (uplink sim on mosquitto): ThingsBoard
                # never sends one back, and its server-side ids are its own, so id and method must match.
                self._echoes = True
                return None
            return command(method, req.get("params"), ("me", rid))
        if topic == ATTRIBUTES:
            attrs = loads_obj(payload, "shared attributes")
            # our own client attributes (on_connect), handed back by a plain broker
            return None if bytes(payload) == self._attrs else self._shared(attrs)
        if topic.startswith(ATTR_RESPONSE):
            if self._waited(_id(topic, ATTR_RESPONSE), payload):
                return None
            resp = loads_obj(payload, "attributes response")
            shared = resp.get("shared") or {}
            client = resp.get("client")
            if not isinstance(shared, dict) or not isinstance(client or {}, dict):
                raise ValueError("attributes response: 'shared'/'client' is not an object")
            if self._pending.get(_id(topic, ATTR_RESPONSE)) == "fw":  # on_connect's OTA question
                return self._shared(shared) if "fw_title" in shared and "fw_version" in shared else None
            if client is None:  # the usual answer (shared keys asked): as a shared update
                return self._shared(shared)
            # clientKeys were asked: both sections, as ThingsBoard answers them
            return Command("attributes", {"client": client, "shared": shared})
        if topic.startswith(RPC_RESPONSE):
            rid = _id(topic, RPC_RESPONSE)
            return None if self._waited(rid, payload) else self._rpc_answer(rid, payload)
        if topic.startswith(FW_RESPONSE):  # an OTA chunk: to uplink.ota_thingsboard, straight to flash
            if self.ctx.ota is not None:
                self.ctx.ota.on_chunk(topic, payload)
            return None
        if self.gateway is not None:
            return self.gateway.handle(topic, payload)
        return None

    def _waited(self, rid, payload):
        w = self.waiter
        if w is None or not w(rid, payload):
            return False
        self._pending.pop(rid, None)
        return True

    def _rpc_answer(self, rid, payload):
        if rid == self._replied:  # our own reply, back from a broker that echoes (handle)
            self._replied = None
            return None
        method = self._pending.pop(rid, None)
        if method is None:
            return None
        p = self.cfg["platform"]
        if method == (p.get("time_method") or "getCurrentTime"):
            return _time_answer(loads(payload, method + " answer"), p.get("time_key"), method)
        ans = loads_obj(payload, method + " answer")
        if method == "getSessionLimits":
            size = ans.get("maxPayloadSize")
            if not isinstance(size, int) or isinstance(size, bool) or size < 256:
                raise ValueError("getSessionLimits answer: bad maxPayloadSize %r" % (size,))
            # the server's limit can only lower ours (platform.max_payload also guards the heap)
            self.max_payload = min(size, self.cfg["platform"].get("max_payload") or DEFAULT_MAX_PAYLOAD)
            n = ans.get("maxInflightMessages")
            self.max_inflight = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None
            if self.limits or ans.get("rateLimits"):  # (a gateway's come with its devices')
                from uplink.platforms import tb_limits  # (loaded only where there are limits)

                tb_limits.update(self, ans)
            self._limits_for = self._asked_on
            self._answers = True
            self._limits.set()
            return None
        return Command("rpc_answer", {"method": method, "result": ans})

    def reply(self, cmd, result):
        to = cmd.reply_to
        if not to:
            return None
        if to[0] == "me":
            if self._echoes:  # it comes back on rpc/response/+ and may share a pending id
                self._replied = to[1]
            return (RPC_RESPONSE + str(to[1]), dumps({} if result is None else result).encode())
        if to[0] == "gw":  # only the gateway part makes these
            return self.gateway.reply(cmd, result)
        return None


def _time_answer(ans, key, method):
    # epoch ms as a bare number (the documented rule chain), or under time_key
    ms = ans.get(key) if key and isinstance(ans, dict) else ans
    if not isinstance(ms, int) or isinstance(ms, bool) or ms <= 0:
        raise ValueError("%s answer: expected epoch milliseconds%s, got %s"
                         % (method, " under %r" % key if key else " (a bare number; or set platform.time_key)",
                            dumps(ans)[:60]))
    return Command("set_time", {"ms": ms})


def user_attributes(attrs):
    """What user.py is told of shared attributes that came with an OTA announcement: the
    others, as an `attributes` command, or None (uplink.ota_thingsboard.Updater.take too)."""
    rest = {}
    for k in attrs:
        if not k.startswith("fw_"):
            rest[k] = attrs[k]
    return Command("attributes", rest) if rest else None


def _id(topic, prefix):
    rid = topic[len(prefix):]
    try:
        v = int(rid)
    except ValueError:
        raise ValueError("%s: request id %r is not a number" % (topic, rid))
    return v

