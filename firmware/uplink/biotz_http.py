# Biotz HTTP ingestion: the alternative to MQTT for Biotz devices. Readings are POSTed as a
# JSON array of flat objects with RFC 3339 UTC timestamps to
#   <ingestion url>/api/device/publish/data/<message type>
# with `Authorization: Bearer <id_token>`; the id_token comes from the token relay (the relay
# does Keycloak's password grant, so the device password stays off the board too).
# A refused token (401) is exchanged for a fresh one once and the POST retried. Any other
# failure raises, so the caller keeps the readings (in the outbox) and tries again later:
# nothing is dropped here.
import json

from uplink import https, log

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
        body = encode(readings)
        status = await self._post(body)
        if status == 401:
            # the id_token expired or was revoked before its time: one new token, one retry
            self.refreshed += 1
            self.credentials.invalidate()
            status = await self._post(body)
        if not 200 <= status < 300:
            raise IngestError("Biotz ingestion %s answered HTTP %d; %d readings kept for later"
                              % (self.url, status, len(readings)))
        log.info("biotz", "%d readings ingested over HTTP" % len(readings))
        return status

    async def _post(self, body):
        _, token = await self.credentials()
        self.posts += 1
        status, _ = await https.request(
            "POST", self.url,
            {"Authorization": "Bearer " + token, "Content-Type": "application/json"},
            body, ca=self.ca, timeout_ms=self.timeout_ms, max_body=2048)
        return status
