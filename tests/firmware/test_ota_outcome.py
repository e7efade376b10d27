# The outcome of an update is owed on flash until the cloud has it: ThingsBoard's updater on
# littlefs (a RAM block device that loses power) against the session's mosquitto, behind a
# Cutter that loses the outcome's PUBLISH or its PUBACK. A power cut at every flash operation
# from the trial's start to the mark's clearing, and at the network points between the commit
# (or the rollback) and the PUBACK, must end with the cloud told UPDATED and the board on the
# new app, or told FAILED and the board on the old one.
import asyncio
import json

import main
from cutter import Cutter
from mptest import heapsize
from ramblockdev import RAMBlockDev
from test_mqtt_broker import HOST, PORTS, client, uid, until
from test_ota import CHUNK, MNT, R, bundle, fetch, fresh, slot_version
from uplink import ota, ota_thingsboard

NEEDS = ("broker",)
TELEMETRY = "v1/devices/me/telemetry"


class Cut(Exception):
    """The board's reset (ota.Updater.reset)."""


class Board:
    name = "host"

    def reset(self):
        raise Cut()


class Ctx:
    """uplink.context.Context's names an updater uses."""

    ota = None

    def __init__(self, c, health=None):
        self.client = c
        self.board = Board()
        self.cfg = {"outbox": {"max_bytes": 0}}
        self.health = health

    def fw(self):
        return ota.running("host", R)

    def unhealthy(self):
        return self.health


class Cloud:
    """What ThingsBoard was told for this run's versions (fw_state telemetry), in order."""

    async def start(self, versions):
        self.states = []
        w = self.w = client("mqtt", "tb-side")
        w.on_message = self._got
        self.versions = versions
        await w.connect()
        await w.subscribe(TELEMETRY, 1)
        return self

    def _got(self, t, p, r):
        d = json.loads(p)
        if isinstance(d, dict) and d.get("current_fw_version") in self.versions and "fw_state" in d:
            self.states.append(d["fw_state"])


async def boot(dev, cut=None, rules=None, ms=3000, loader=True):
    """One boot of the board: the boot loader's choice (`loader`; else the boot in progress),
    then (when owed) the updater over a connection through a Cutter with `rules`; `cut`: flash
    operations until the power dies; `ms`: the power dies then, whatever the updater is doing."""
    d = main.slot(R) if loader else None
    if not ota.owed(R):
        return d
    proxy = await Cutter(HOST, PORTS["mqtt"]).start()
    for k in rules or {}:
        setattr(proxy, k, rules[k])
    c = client("mqtt", "ota-dev", keepalive=0)
    c.set_url(proxy.url)
    c.backoff_min_ms = c.backoff_max_ms = 50
    await c.connect(retry=True)
    dev.writes = 0
    dev.cut = cut
    t = asyncio.create_task(ota_thingsboard.Updater(Ctx(c), R).run())
    try:
        await asyncio.wait_for_ms(t, ms)
    except (OSError, Cut, asyncio.TimeoutError):
        pass  # the power cut (flash), the reset (trial), or the power cut at `ms`
    await c.disconnect()
    proxy.close()
    dev.unmount(MNT)
    dev.power_on()
    dev.mount(MNT)
    return d


async def update(raw, want):
    # test_ota.update, inside the running event loop
    st = ota.Stage(want, CHUNK, R)
    fetch(st, raw, None)
    st.switch(await st.install(await st.verify("host")))


async def setup(dev, rollback):
    """v1 committed, v2 installed and booted once on trial; `rollback`: and booted again
    without a commit (a crash), so the old app runs and owes FAILED."""
    tag = uid()
    raw1, want1 = bundle("1-" + tag)
    raw2, want2 = bundle("2-" + tag, commit_after_s=0)
    fresh(dev)
    await update(raw1, want1)
    main.slot(R)
    ota.write_slot({"cur": "app_a", "prev": "", "sum": want1["sha256"]}, R)
    await update(raw2, want2)
    assert main.slot(R) == "app_b"
    if rollback:
        assert main.slot(R) == "app_a"
    return ("1-" + tag, "2-" + tag)


async def one_run(dev, rollback, cut=None, rules=None, ms=3000):
    vs = await setup(dev, rollback)
    cloud = await Cloud().start(vs)
    try:
        # the boot in progress (the trial's, or the rollback's) runs its updater; it may be cut
        await boot(dev, cut, rules, ms, loader=False)
        writes = dev.writes
        for _ in range(3):  # then boots without cuts until nothing is owed
            if not ota.owed(R):
                break
            await boot(dev)
        assert not ota.owed(R), ota.read_slot(R)
        d = main.slot(R)
        await until(lambda: cloud.states and cloud.states[-1] in ("UPDATED", "FAILED"), 3000)
        told = cloud.states[-1]
        v = slot_version(d)
        assert (told, v) in (("UPDATED", vs[1]), ("FAILED", vs[0])), (cut, rules, told, v, cloud.states)
        return told, writes
    finally:
        await cloud.w.disconnect()


@heapsize("256k")
async def test_the_outcome_reaches_the_cloud_across_a_power_cut_at_every_flash_operation():
    dev = RAMBlockDev(512, 96)
    for rollback in (False, True):
        told, total = await one_run(dev, rollback)
        assert told == ("FAILED" if rollback else "UPDATED")
        dev.unmount(MNT)
        seen = set()
        for cut in range(total + 1):
            seen.add((await one_run(dev, rollback, cut))[0])
            dev.unmount(MNT)
        # a cut before the commit's rename rolls back: both ends are seen, each one told
        assert seen == ({"FAILED"} if rollback else {"UPDATED", "FAILED"}), (rollback, seen)
        print("%s: %d power cuts checked" % ("rollback" if rollback else "commit", total + 1))


@heapsize("256k")
async def test_the_outcome_is_sent_again_after_a_cut_between_the_commit_and_its_puback():
    dev = RAMBlockDev(512, 96)
    for rollback in (False, True):
        # the outcome's PUBLISH lost (the link drops with it), then the power; or the broker
        # has it and its PUBACK is lost, then the power: the next boot sends it again
        for rules in ({"after_publishes": 1}, {"drop_pubacks": True}):
            told, _ = await one_run(dev, rollback, rules=rules, ms=1500)
            assert told == ("FAILED" if rollback else "UPDATED"), (rollback, rules, told)
            dev.unmount(MNT)
