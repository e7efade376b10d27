# ThingsBoard device provisioning on first boot (PLATFORMS.md): connect as `provision`,
# ask with the device profile's key and secret, keep the access token that comes back.
# A module of its own: only a device that still has to be provisioned loads it.
import asyncio

from uplink import ConfigError
from uplink.platforms import dumps, loads_obj

REQUEST = "/provision/request"
RESPONSE = "/provision/response"


class ProvisionError(ConfigError):
    # The server refused: as with a config mistake, retrying the same request cannot help,
    # so the app stops in safe mode with the reason. No answer at all is an OSError instead
    # (a network matter: the app resets and tries again).
    pass


def opener(ctx):
    """`await open_client(user, password)`: a connected MQTT client of this cloud (the app's
    client factory, Context.new_client), one attempt; the caller disconnects it."""

    async def open_client(user, password):
        c = ctx.new_client(user=user, password=password)
        await c.connect()
        return c

    return open_client


async def provision(adapter, open_client):
    """Ask for a token with `open_client` (opener); it is stored with ctx.save_config() and
    adapter.credentials() returns it from then on."""
    cfg = adapter.cfg
    p = cfg["platform"]
    got = asyncio.Event()
    answer = []

    def on_message(topic, payload, retained):
        if topic == RESPONSE and not answer:
            answer.append(payload)
            got.set()

    client = await open_client("provision", None)  # type: ignore
    try:
        client.on_message = on_message
        await client.subscribe(RESPONSE, 1)
        await client.publish(REQUEST, dumps({
            "deviceName": cfg["device"]["name"],
            "provisionDeviceKey": p["provision_key"],
            "provisionDeviceSecret": p["provision_secret"]}).encode(), 1)
        try:
            await asyncio.wait_for(got.wait(), adapter.provision_timeout_s)
        except asyncio.TimeoutError:
            raise OSError("provisioning: no answer on %s within %d s" % (RESPONSE, adapter.provision_timeout_s))
    finally:
        try:
            await client.disconnect()
        except Exception:
            pass
    p["token"] = parse_response(answer[0])
    adapter.ctx.save_config(cfg)


def parse_response(payload):
    try:
        ans = loads_obj(payload, "provision response")
    except ValueError:
        # no preview of the payload: it may hold (part of) a token
        raise ProvisionError("provision response: not a JSON object")
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

