# Biotz HTTP ingestion: the alternative to MQTT for Biotz devices. Readings are POSTed as a
# JSON array of flat objects with RFC 3339 UTC timestamps to
#   <ingestion url>/api/device/publish/data/<message type>
# with `Authorization: Bearer <id_token>`; the id_token comes from the token relay (the relay
# does Keycloak's password grant, so the device password stays off the board too).
# A refused token (401) is exchanged for a fresh one once and the POST retried. Any other
# failure raises, so the caller keeps the readings (in the outbox) and tries again later:
# nothing is dropped here.
import asyncio
import json
import random

from uplink import https

DEFAULT_URL = "https://ingestion-http.biotz.io"


class IngestError(OSError):
    pass


def iso_ms(ms):
    """Epoch milliseconds -> '2026-01-01T12:00:00Z' (RFC 3339, UTC): integer arithmetic on
    days (H. Hinnant's civil_from_days), independent of the port's epoch and floats."""
    s, frac = divmod(int(ms), 1000)
    days, rem = divmod(s, 86400)
    era = (days + 719468) // 146097
    doe = days + 719468 - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    m = mp + 3 if mp < 10 else mp - 9
    out = "%04d-%02d-%02dT%02d:%02d:%02d" % (
        yoe + era * 400 + (m <= 2), m, doy - (153 * mp + 2) // 5 + 1,
        rem // 3600, rem // 60 % 60, rem % 60)
    return out + (".%03dZ" % frac if frac else "Z")


def encode(readings):
    """[{"ts": ms|None, "values": {...}}] -> the JSON body (bytes) Biotz ingestion takes."""
    out = []
    for r in readings:
        o = {}
        values = r["values"]
        for k in values:
            v = values[k]
            if isinstance(v, (dict, list, tuple)):
                raise ValueError("Biotz objects are flat: value %r is a %s" % (k, type(v).__name__))
            o[k] = v
        if r.get("ts") is not None:
            o["timestamp"] = iso_ms(r["ts"])
        out.append(o)
    return json.dumps(out).encode()


class BiotzHTTP:
    """await post(readings) -> HTTP status (2xx); raises IngestError / OSError otherwise."""

    def __init__(self, credentials, message_type="telemetry", url=None, ca=None, timeout_ms=10000):
        self.credentials = credentials  # uplink.credentials.Credentials (source relay)
        self.url = (url or DEFAULT_URL).rstrip("/") + "/api/device/publish/data/" + message_type
        self.ca = ca
        self.timeout_ms = timeout_ms
        self.posts = 0
        self.refreshed = 0

    async def post(self, readings):
        return await self.post_body(encode(readings), len(readings))

    async def post_body(self, body, n=1):
        status = await self._post(body)
        if status == 401:
            # the id_token expired or was revoked before its time: one new token, one retry
            self.refreshed += 1
            self.credentials.invalidate()
            status = await self._post(body)
        if not 200 <= status < 300:
            raise IngestError("Biotz ingestion %s answered HTTP %d; %d %s kept for later"
                              % (self.url, status, n, "reading" if n == 1 else "readings"))
        return status

    async def _post(self, body):
        _, token = await self.credentials()
        self.posts += 1
        status, _ = await https.request(
            "POST", self.url,
            {"Authorization": "Bearer " + token, "Content-Type": "application/json"},
            body, ca=self.ca, timeout_ms=self.timeout_ms, max_body=2048)
        return status


class Session:
    """Biotz HTTP ingestion behind the MQTT client's interface, so the publisher and the flash
    outbox work unchanged (`transport = "http"`, platforms/biotz.py): publish() queues a body
    and returns an id; the id is acknowledged (on_ack) only after a 2xx, so a reading leaves
    the outbox only once ingestion has it. A failed POST is retried, oldest first, after a
    backoff; meanwhile is_connected is False and the publisher reads nothing new."""

    on_message = on_status = on_connect = on_ack = on_down = on_up = None
    connections = 1  # as MQTTClient's: one "connection" for the session's life
    QUEUE = 2  # bodies held in RAM; the publisher waits in publish() beyond that
    window = QUEUE  # as MQTTClient.window: ids in flight at once (the publisher's slots)
    backoff_min_ms = 2000
    backoff_max_ms = 60000

    def __init__(self, credentials, message_type, url=None, ca=None, timeout_ms=10000):
        self.http = BiotzHTTP(credentials, message_type, url=url, ca=ca, timeout_ms=timeout_ms)
        self._queue = []  # [(pid, body)], oldest first
        self._pid = 0
        self._ok = False
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._task = None

    @property
    def is_connected(self):
        return self._ok

    async def connect(self, retry=False):
        # "connected" = a token in hand: the relay answered (the first POST proves the rest)
        n = 0
        while True:
            try:
                await self.http.credentials()
                break
            except OSError as e:
                if not retry:
                    raise
                n = await self._backoff(e, n)
        self._up()
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    def _up(self):
        if not self._ok:
            self._ok = True
            self._status("connected", None)
            if self.on_up is not None:
                self.on_up()
            if self.on_connect is not None:
                asyncio.create_task(self.on_connect())

    async def subscribe(self, topic, qos=0):
        pass  # HTTP ingestion has no downlink

    async def disconnect(self):
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._ok = False

    def forget(self, pid):
        pass  # never asked: this session never calls on_down

    async def publish(self, topic, payload, qos=1, retain=False, wait=False):
        while len(self._queue) >= self.QUEUE:
            self._room.clear()
            await self._room.wait()
        self._pid = self._pid % 65535 + 1
        self._queue.append((self._pid, payload))
        self._wake.set()
        return self._pid

    async def _run(self):
        n = 0
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            pid, body = self._queue[0]
            try:
                await self.http.post_body(body)
            except Exception as e:  # kept: the same body goes again after the backoff
                self._ok = False
                n = await self._backoff(e, n)
                continue
            n = 0
            self._queue.pop(0)
            self._room.set()
            self._up()
            if self.on_ack is not None:
                self.on_ack(pid)

    async def _backoff(self, e, n):
        self._status("error", e)
        delay = min(self.backoff_max_ms, self.backoff_min_ms << min(n, 8))
        delay = delay // 2 + random.getrandbits(16) * (delay // 2) // 65536  # jitter
        self._status("backoff", delay / 1000)
        await asyncio.sleep_ms(delay)
        return n + 1

    def _status(self, event, detail):
        if self.on_status is not None:
            try:
                self.on_status(event, detail)
            except Exception:
                pass
