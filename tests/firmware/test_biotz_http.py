# uplink.biotz_http against the Biotz-like ingestion endpoint of the loopback test provider
# (tests/oidc_provider.py), with the id_token obtained through the real token relay.
import binascii
import hashlib
import json

from mptest import env, raises
from uplink import credentials, https
from uplink.biotz_http import BiotzHTTP, encode, iso_ms

NEEDS = ("oidc",)


def relay_cfg(**kw):
    c = {"source": "relay", "url": env("RELAY_URL"), "ca": env("RELAY_CA_DER"),
         "device_id": "bz-1", "key": env("RELAY_BZ_KEY"), "min_life_s": 60}
    c.update(kw)
    return c


def test_encode_flat_rfc3339():
    body = json.loads(encode([{"ts": 1767268800000, "values": {"t": 1.5, "ok": True}},
                              {"ts": None, "values": {"t": 2}}]))
    assert body == [{"timestamp": "2026-01-01T12:00:00Z", "t": 1.5, "ok": True}, {"t": 2}]
    assert iso_ms(1767268800250) == "2026-01-01T12:00:00.250Z"
    with raises(ValueError, match="flat"):
        encode([{"ts": None, "values": {"nested": {"a": 1}}}])


def _fp(token):
    return binascii.hexlify(hashlib.sha256(token.encode()).digest()).decode()[:16]


async def _ingested():
    st, body = await https.request("GET", env("OIDC_BASE") + "/test/ingested",
                                   ca=env("OIDC_CA_DER"), max_body=16384)
    assert st == 200
    return json.loads(body)


async def _reject_next(n):
    st, _ = await https.request("POST", env("OIDC_BASE") + "/test/reject-ingest/%d" % n,
                                ca=env("OIDC_CA_DER"), body=b"")
    assert st == 204


def biotz_client():
    c = credentials.Credentials(relay_cfg())
    return c, BiotzHTTP(c, "telemetry", url=env("OIDC_BASE"), ca=env("OIDC_CA_DER"))


async def test_biotz_http_posts_with_id_token():
    await _reject_next(0)
    c, b = biotz_client()
    readings = [{"ts": 1767268800000 + i * 1000, "values": {"n": i}} for i in range(5)]
    assert await b.post(readings) == 204
    got = await _ingested()
    assert got["bodies"] == [[{"timestamp": iso_ms(1767268800000 + i * 1000), "n": i}
                              for i in range(5)]]
    user, token = await c()
    assert user == "dev-42@devices.data-ingestion.biotz.io"
    assert token.count(".") == 2  # the id_token (a JWT), not the opaque access token
    assert got["log"][0]["token"] == _fp(token)


async def test_biotz_http_401_refreshes_once_and_retries():
    await _reject_next(1)
    c, b = biotz_client()
    assert await b.post([{"ts": 1767268800000, "values": {"n": 1}}]) == 204
    got = await _ingested()
    assert [e["ok"] for e in got["log"]] == [False, True]
    assert got["log"][0]["token"] != got["log"][1]["token"]  # a new id_token for the retry
    assert b.refreshed == 1 and c.fetches == 2
    assert len(got["bodies"]) == 1


async def test_biotz_http_keeps_readings_when_refused_twice():
    await _reject_next(2)
    c, b = biotz_client()
    readings = [{"ts": 1767268800000, "values": {"n": 1}}]
    with raises(OSError, match="kept"):
        await b.post(readings)
    assert readings == [{"ts": 1767268800000, "values": {"n": 1}}]
    got = await _ingested()
    assert got["bodies"] == [] and len(got["log"]) == 2  # one retry, not a loop


async def test_session_acks_only_after_ingestion_and_keeps_order_across_refusals():
    # transport = "http": the publisher sees the MQTT client's interface; an id is acked (the
    # reading leaves the outbox) only after a 2xx, and a refused body is sent again, in order
    import asyncio

    from uplink.biotz_http import Session

    await _reject_next(2)  # the first POST and its one retry with a fresh token: both 401
    c = credentials.Credentials(relay_cfg())
    s = Session(c, "telemetry", url=env("OIDC_BASE"), ca=env("OIDC_CA_DER"))
    s.backoff_min_ms = 20
    acked, events = [], []
    s.on_ack = acked.append
    s.on_status = lambda ev, d: events.append(ev)
    await s.connect(retry=True)
    assert s.is_connected and events == ["connected"]
    pids = []
    for i in range(2):
        pids.append(await s.publish("", ('[{"n":%d}]' % i).encode(), qos=1, wait=False))
    assert acked == []  # nothing acknowledged before ingestion answered
    pids.append(await s.publish("", b'{"n":2}', qos=1, wait=False))  # waits for room in the queue
    for _ in range(500):
        if len(acked) == 3:
            break
        await asyncio.sleep_ms(10)
    assert acked == pids
    got = await _ingested()
    assert got["bodies"] == [[{"n": 0}], [{"n": 1}], {"n": 2}]
    assert [e["ok"] for e in got["log"]] == [False, False, True, True, True]
    assert "error" in events and "backoff" in events and events[-1] == "connected"
    assert c.fetches == 2  # the first token and the one refresh on a 401 (the relay rate-limits more)
    await s.disconnect()
