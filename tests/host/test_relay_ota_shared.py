"""OTA bundles for relay replicas: content-addressed on the storage every replica reads, the
offer in Redis (read in the nonce's round trip); a replica never offers a bundle it lacks."""

from __future__ import annotations

import asyncio
import base64
import shutil

from host_tools import ota_bundle as bu
from host_tools.relay import OTA_PATH
from host_tools.relay_state import RedisState
from tests.host.test_ota_cli import small_bundle
from tests.host.test_relay import Harness
from tests.host.test_relay_redis import Fleet


def test_one_bundle_offered_to_many_devices_is_stored_once(tmp_path, provider, pki):  # noqa: F811
    made = small_bundle(tmp_path, "esp32-devkitc")
    state = tmp_path / "state"
    a = bu.offer(made, state, "wt-1")
    b = bu.offer(made, state, "wt-2")
    assert a == b == state / "ota" / "sha256" / f"{made.sha256}.uplb"
    assert sorted(p.name for p in (state / "ota").iterdir()) == ["sha256", "wt-1.offer", "wt-2.offer"]

    async def go():  # a single relay reads the offer from the state directory
        async with Harness(provider, pki, ota_dir=state / "ota") as h:
            cred = (await h.get()).json()
            bundle = await h.get(path=OTA_PATH)
            return cred, bundle

    cred, bundle = asyncio.run(go())
    assert cred["ota"] == {"version": "2.1", "size": made.size, "sha256": made.sha256}
    assert bundle.status_code == 200 and bundle.content == made.path.read_bytes()
    assert base64.b64decode(bundle.headers["x-sha256"]).hex() == made.sha256


def test_replica_offers_only_a_bundle_it_has(tmp_path, provider, pki, redis):  # noqa: F811
    made = small_bundle(tmp_path, "esp32-devkitc")
    synced = tmp_path / "a" / "state"
    lagging = tmp_path / "b" / "ota"  # storage that has not caught up on replica 1
    bu.offer(made, synced, "wt-1")
    lagging.mkdir(parents=True)

    async def fn(f):
        f.replicas[0].relay.settings.ota_dir = synced / "ota"
        f.replicas[1].relay.settings.ota_dir = lagging
        await f.replicas[0].state.publish_offer("wt-1", bu.offer_json(made))
        out = {"a": (await f.get(0)).json(), "b": (await f.get(1)).json()}
        out["a_ota"] = await f.get(0, path=OTA_PATH)
        out["b_ota"] = await f.get(1, path=OTA_PATH)
        blob = bu.blob_path(lagging, made.sha256)
        blob.parent.mkdir()
        blob.write_bytes(bytes(made.size))  # a copy of the right size, not yet the right bytes
        out["b_partial"] = (await f.get(1)).json()
        shutil.copyfile(bu.blob_path(synced / "ota", made.sha256), blob)  # the sync arrives
        out["b_later"] = (await f.get(1)).json()
        raw = [await f.replicas[0].state.r.get(k) async for k in f.replicas[0].state.r.scan_iter("uplink:relay:ota:*")]
        out["raw"] = raw
        return out

    out = asyncio.run(_run(provider, pki, redis, fn))
    want = {"version": "2.1", "size": made.size, "sha256": made.sha256}
    assert out["a"]["ota"] == want
    assert "ota" not in out["b"] and out["b"]["password"] == out["a"]["password"]
    assert out["a_ota"].status_code == 200 and out["a_ota"].content == made.path.read_bytes()
    assert out["b_ota"].status_code == 204
    assert "ota" not in out["b_partial"]
    assert out["b_later"]["ota"] == want
    assert len(out["raw"]) == 1 and len(out["raw"][0]) < 200  # only the offer is in Redis


def test_offers_reseeded_into_an_empty_redis(tmp_path, redis):
    made = small_bundle(tmp_path, "esp32-devkitc")
    state = tmp_path / "state"
    bu.offer(made, state, "wt-1")

    async def go():
        import time

        st = RedisState(redis.url, b"k" * 32, ota_dir=state / "ota")
        try:
            await st.start()  # a new Redis: the epoch, and the offers from the state directory
            await asyncio.sleep(1.05)
            _, offer = await st.admit("wt-1", "n" * 16, int(time.time()), time.time())
            return offer
        finally:
            await st.close()

    assert asyncio.run(go()) == bu.offer_json(made)


async def _run(provider, pki, redis, fn):  # noqa: F811
    async with Fleet(provider, pki, redis) as f:
        return await fn(f)

