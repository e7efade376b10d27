# Blynk's downlink/redirect: where it moves us. Loaded for a redirect only (in a transient):
# at most once per connection, and not worth its bytecode's heap the rest of the time.


def url(to, current):
    """The URL a downlink/redirect moves us to. The authentication page gives the payload as
    `host:port` ("i.e. ny3.blynk.cloud:8883"; the scheme and path stay ours, as in Blynk's
    MicroPython sample) and, in its newer text, as a URI (mqtts://..., wss://.../mqtt): both
    are taken (docs.blynk.io/en/blynk.cloud-mqtt-api/device-mqtt-api/authentication)."""
    from uplink.transport import parse_url  # the app's: loaded for the connection

    try:
        if "://" not in to:
            k = to.rfind(":")
            if k <= 0 or "/" in to:
                raise ValueError("expected host:port or a URL, got %r" % to[:60])
            scheme, _, _, path = parse_url(current)
            to = "%s://%s%s" % (scheme, to, path)
        parse_url(to)  # the app reconnects there: a URL it can use, or no redirect
    except ValueError as e:
        raise ValueError("redirect: %s" % str(e)[:100])
    return to
