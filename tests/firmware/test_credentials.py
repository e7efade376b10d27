# uplink.credentials against the real token relay (host_tools.relay) in front of a real OIDC
# provider on loopback (tests/oidc_provider.py: OIDCService), over TLS checked against the
# relay's CA given as DER.

from mptest import env, raises
from uplink import credentials, https
from wallclock import unix_ms

NEEDS = ("oidc",)


def relay_cfg(**kw):
    c = {"source": "relay", "url": env("RELAY_URL"), "ca": env("RELAY_CA_DER"),
         "device_id": "wt-1", "key": env("RELAY_WT_KEY"), "min_life_s": 60}
    c.update(kw)
    return c


def test_hmac_matches_rfc4231():
    # RFC 4231 test case 2 and a key longer than the block (case 6)
    m = credentials.HMAC(b"Jefe")
    assert m.hexdigest(b"what do ya want for nothing?") == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    m = credentials.HMAC(b"\xaa" * 131)
    assert m.hexdigest(b"Test Using Larger Than Block-Size Key - Hash Key First") == (
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")


async def test_static_source_and_fallback():
    c = credentials.Credentials({"source": "static", "username": "u", "password": "p"})
    assert await c() == ("u", "p")
    c = credentials.from_config({"token": "tb-token", "credentials": None})
    assert await c() == (None, "tb-token")


def test_relay_config_checked():
    with raises(ValueError, match="platform.credentials.key"):
        credentials.Credentials(relay_cfg(key=None))
    with raises(ValueError, match="https://"):
        credentials.Credentials(relay_cfg(url="http://127.0.0.1:1"))
    with raises(ValueError, match="platform.credentials.ca"):
        credentials.Credentials(relay_cfg(ca=None))
    with raises(ValueError, match="hex"):
        credentials.Credentials(relay_cfg(key="zz"))


async def test_relay_gives_token_and_cache_reused():
    c = credentials.Credentials(relay_cfg())
    user, pw = await c()
    assert user == "app-5f1e2d"  # the unexpired application of the account
    assert pw and len(pw) > 20
    assert c.fetches == 1
    assert 200 < c.remaining_s() <= 300
    assert await c() == (user, pw)
    assert c.fetches == 1  # more than min_life_s left: no second request


def test_request_signed_with_unix_time_on_a_port_of_either_epoch():
    # no now_ms: the port's own clock. On the ESP32 (and its model) time.time() counts from
    # 2000; the relay wants unix seconds within 30 s, so a raw time.time() is 30 years off.
    c = credentials.Credentials(relay_cfg())
    h = c.headers("/v1/credentials")
    assert abs(int(h["X-Uplink-Time"]) - unix_ms() // 1000) <= 2, (h["X-Uplink-Time"], unix_ms())


async def test_cache_expires_at_min_life():
    # a min_life_s above the token's remaining lifetime: every call asks the relay again
    c = credentials.Credentials(relay_cfg(min_life_s=299))
    await c()
    await c()
    assert c.fetches == 2


async def test_lifetime_counted_on_the_board_clock():
    t = [unix_ms()]
    c = credentials.Credentials(relay_cfg(min_life_s=280), now_ms=lambda: t[0])
    await c()
    assert 290 < c.remaining_s() <= 300 and c.fetches == 1
    t[0] += 12000
    await c()
    assert c.fetches == 1  # ~287 s left: still above 280
    t[0] += 12000  # (within the relay's 30 s time window)
    await c()
    assert c.fetches == 2  # ~275 s left: below 280: a new answer


async def test_concurrent_callers_share_one_relay_request():
    import asyncio

    c = credentials.Credentials(relay_cfg())
    got = await asyncio.gather(c(), c(), c(), c())
    assert c.fetches == 1 and len(set(got)) == 1


async def test_invalidate_asks_for_a_fresh_token():
    c = credentials.Credentials(relay_cfg())
    _, pw1 = await c()
    c.invalidate()
    _, pw2 = await c()
    assert c.fetches == 2 and pw2 != pw1


async def test_wrong_key_is_refused_without_leaking_it():
    key = "ab" * 32
    c = credentials.Credentials(relay_cfg(key=key))
    with raises(credentials.CredentialsError, match="401") as r:
        await c()
    assert key not in str(r.value)


def _kid(key_hex):
    import binascii
    import hashlib

    return binascii.hexlify(hashlib.sha256(binascii.unhexlify(key_hex)).digest()).decode()[:8]


async def test_key_id_is_sent_and_signed():
    kid = _kid(env("RELAY_WT_KEY"))
    c = credentials.Credentials(relay_cfg(key_id=kid))
    h = c.headers("/v1/credentials")
    assert h["X-Uplink-Key-Id"] == kid
    user, pw = await c()  # the relay checks the key id inside the signature
    assert user == "app-5f1e2d" and pw


async def test_key_id_of_another_key_is_refused():
    c = credentials.Credentials(relay_cfg(key_id=_kid("ab" * 32)))
    with raises(credentials.CredentialsError, match="401"):
        await c()


async def test_unknown_device_refused():
    c = credentials.Credentials(relay_cfg(device_id="nobody"))
    with raises(credentials.CredentialsError, match="401"):
        await c()


async def test_wrong_ca_refused():
    # the OIDC provider's CA did not sign the relay's certificate
    c = credentials.Credentials(relay_cfg(ca=env("OIDC_CA_DER")))
    with raises(credentials.CredentialsError):
        await c()
    assert c.remaining_s() == 0


async def test_clock_far_off_is_refused():
    # a board whose clock is an hour off sends a stale timestamp: 401, a message saying so
    c = credentials.Credentials(relay_cfg(), now_ms=lambda: unix_ms() - 3600000)
    with raises(credentials.CredentialsError, match="clock"):
        await c()


async def test_https_survives_a_header_longer_than_the_buffer():
    st, body = await https.request("GET", env("OIDC_BASE") + "/test/long-header",
                                   ca=env("OIDC_CA_DER"))
    assert (st, body) == (200, b"ok")


def test_https_parse_url():
    assert https.parse_url("https://relay.lan:8443/v1/x?a=1") == (True, "relay.lan", 8443, "/v1/x?a=1")
    assert https.parse_url("http://10.0.0.1") == (False, "10.0.0.1", 80, "/")
    assert https.parse_url("https://[::1]:9443/") == (True, "::1", 9443, "/")
    with raises(ValueError):
        https.parse_url("ftp://x")
    with raises(ValueError):
        https.parse_url("https://host:port/")
