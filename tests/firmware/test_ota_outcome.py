# The outcome of an update is owed on flash until the cloud has it: ThingsBoard's updater (and
# Blynk's, whose outcome is the sys_ota event) on littlefs (a RAM block device that loses
# power) against the session's mosquitto, behind a Cutter that loses the outcome's PUBLISH or
# its PUBACK. A power cut at every flash operation from the trial's start to the mark's
# clearing, and at the network points between the commit (or the rollback) and the PUBACK,
# must end with the cloud told UPDATED and the board on the new app, or told FAILED and the
# board on the old one.
import asyncio
import json

import main
from cutter import Cutter
from mptest import heapsize
from ramblockdev import RAMBlockDev
from test_mqtt_broker import HOST, PORTS, client, uid, until
from test_ota import CHUNK, MNT, R, bundle, fetch, fresh, slot_version
from uplink import ota, ota_blynk, ota_stage, ota_thingsboard

NEEDS = ("broker",)
TELEMETRY = "v1/devices/me/telemetry"


class Cut(Exception):
    """The board's reset (ota.Updater.reset)."""


class Board:
    name = "host"

    def reset(self):
        raise Cut()


class Adapter:
    own_prefix = None  # Blynk's topic prefix: one per test run on the shared broker


class Ctx:
    """uplink.context.Context's names an updater uses."""

    ota = None

    def __init__(self, c, health=None):
        self.client = c
        self.board = Board()
        self.cfg = {"device": {}, "outbox": {"max_bytes": 0}}
        self.health = health
        self.adapter = Adapter()

    def fw(self):
        return ota.running("host", R)

    def user(self):  # (user.py, read() calls that returned): Context.user
        return self, 0 if self.health else 1


class Cloud:
    """What the cloud was told for this run's versions, in order: ThingsBoard's fw_state
    telemetry, or Blynk's sys_ota events (under this run's prefix)."""

    async def start(self, kind, versions):
        self.kind = kind
        self.states = []
        w = self.w = client("mqtt", "cloud-side")
        w.on_message = self._got
        self.versions = versions
        await w.connect()
        await w.subscribe(TELEMETRY if kind == "thingsboard" else Adapter.own_prefix + "event/sys_ota", 1)
        return self

    def _got(self, t, p, r):
        if self.kind == "blynk":
            text = bytes(p).decode()
            if text == "Firmware updated to " + self.versions[1]:
                self.states.append("UPDATED")
            elif text.startswith("OTA failed: rolled back"):
                self.states.append("FAILED")
            return
        d = json.loads(p)
        if isinstance(d, dict) and d.get("current_fw_version") in self.versions and "fw_state" in d:
            self.states.append(d["fw_state"])


UPDATERS = {"thingsboard": ota_thingsboard.Updater, "blynk": ota_blynk.Updater}


async def boot(dev, kind, cut=None, rules=None, ms=3000, loader=True):
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
    t = asyncio.create_task(UPDATERS[kind](Ctx(c), R).run())
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
    st = ota_stage.Stage(want, CHUNK, R)
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


async def one_run(dev, rollback, cut=None, rules=None, ms=3000, kind="thingsboard"):
    vs = await setup(dev, rollback)
    Adapter.own_prefix = "t/%s/" % vs[0]
    cloud = await Cloud().start(kind, vs)
    try:
        # the boot in progress (the trial's, or the rollback's) runs its updater; it may be cut
        await boot(dev, kind, cut, rules, ms, loader=False)
        writes = dev.writes
        for _ in range(3):  # then boots without cuts until nothing is owed
            if not ota.owed(R):
                break
            await boot(dev, kind)
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
    for kind in ("thingsboard", "blynk"):
        for rollback in (False, True):
            # the outcome's PUBLISH lost (the link drops with it), then the power; or the
            # broker has it and its PUBACK is lost, then the power: the next boot sends it again
            for rules in ({"after_publishes": 1}, {"drop_pubacks": True}):
                told, _ = await one_run(dev, rollback, rules=rules, ms=1500, kind=kind)
                assert told == ("FAILED" if rollback else "UPDATED"), (kind, rollback, rules, told)
                dev.unmount(MNT)
