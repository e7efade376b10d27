# OTA staging and the slot switch on littlefs (VfsLfs2 over a RAM block device), with the boot
# loader's choice (main.slot) after every step: a power cut at every program/erase operation
# of a download, its checks, the unpacking and the switch must leave a board that boots the
# old app or the new one, whole, never neither; and the download resumes after it.
import asyncio
import hashlib
import json
import os

import main
from mptest import heapsize, raises
from ramblockdev import RAMBlockDev
from uplink import ota, ota_stage, ota_trial

MNT = "/ram"
R = MNT + "/"
CHUNK = 256


def _hex(b):
    return "".join("%02x" % x for x in b)


def bundle(version, board="host", extra=b"", **more):
    """A bundle as host_tools/ota_bundle.py writes it, made here (the format is the contract);
    `more`: manifest keys (commit_after_s, trial_s)."""
    files = [("uplink/mod.py", b"V = %r\n" % version + b"#" * 300), ("user.py", b"U = %r\n" % version + extra)]
    body = b"".join(d for _, d in files)
    m = {"format": "uplink-bundle/1", "title": "uplink-host", "version": version, "board": board, "arch": None,
         "files": [[p, len(d), _hex(hashlib.sha256(d).digest())] for p, d in files],
         "body_sha256": _hex(hashlib.sha256(body).digest())}
    m.update(more)
    raw = json.dumps(m).encode() + b"\n" + body
    return raw, {"title": "uplink-host", "version": version, "size": len(raw),
                 "sha256": _hex(hashlib.sha256(raw).digest())}


def fetch(st, raw, start=0, stop=None):
    n = st.begin() if start is None else start
    last = (len(raw) + CHUNK - 1) // CHUNK if stop is None else stop
    while n < last:
        st.add(raw[n * CHUNK:(n + 1) * CHUNK])
        n += 1


def update(raw, want, board="host"):
    st = ota_stage.Stage(want, CHUNK, R)
    fetch(st, raw, None)
    m = asyncio.run(st.verify(board))
    new = asyncio.run(st.install(m))
    st.switch(new)
    return new


def slot_version(d):
    """The version a boot of slot d would run, after checking each of its files."""
    with open(R + d + "/bundle.json") as f:  # closed now: a file left to the GC after
        m = json.load(f)  # the unmount crashes the port
    for p, size, sha in m["files"]:
        with open(R + d + "/" + p, "rb") as f:
            data = f.read()
        assert len(data) == size and _hex(hashlib.sha256(data).digest()) == sha, p
    return m["version"]


def fresh(dev):
    dev.wipe()
    dev.format()
    dev.mount(MNT)


def test_update_trial_commit_and_rollback():
    dev = RAMBlockDev(512, 96)
    fresh(dev)
    try:
        assert main.slot(R) == ""  # no OTA yet: the app deployed over USB
        raw, want = bundle("1")
        assert update(raw, want) == "app_a"
        assert main.slot(R) == "app_a" and ota.read_slot(R)["trial"] == 1
        assert main.on_trial == ota_trial.TRIAL_S * 1000  # main.py arms the watchdog for the trial
        assert slot_version("app_a") == "1" and ota.current(R) == ("uplink-host", "1")
        # a second boot without a commit (a crash, the watchdog, a power cut): the previous app
        assert main.slot(R) == "" and ota.read_slot(R)["failed"] == "app_a" and not main.on_trial
        update(raw, want)
        assert main.slot(R) == "app_a"
        ota.write_slot({"cur": "app_a", "prev": "", "sum": want["sha256"]}, R)  # committed
        assert main.slot(R) == "app_a" and main.slot(R) == "app_a"
        raw2, want2 = bundle("2")
        assert update(raw2, want2) == "app_b"  # the slot not running
        assert main.slot(R) == "app_b" and slot_version("app_b") == "2"
        assert main.slot(R) == "app_a" and slot_version("app_a") == "1"
        assert not _exists(R + ota.PART) and not _exists(R + ota.DL)
    finally:
        dev.unmount(MNT)


def test_running_version_is_the_active_slots_bundle_else_the_build():
    # what health's fw_version and ThingsBoard's current_fw_title/version report: one title,
    # the one the bundle declares (host_tools/ota_bundle.py title_for), cabled or updated
    from uplink import VERSION

    dev = RAMBlockDev(512, 96)
    fresh(dev)
    try:
        assert ota.running("host", R) == ("uplink-host", VERSION)  # deployed over USB
        raw, want = bundle("7.1")
        update(raw, want)
        assert main.slot(R) == "app_a"
        assert ota.running("host", R) == ("uplink-host", "7.1")
        assert main.slot(R) == ""  # rolled back: the build's again
        assert ota.running("host", R) == ("uplink-host", VERSION)
    finally:
        dev.unmount(MNT)


def _exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False


def test_refused_bundles_change_nothing():
    dev = RAMBlockDev(512, 96)
    fresh(dev)
    try:
        raw, want = bundle("2")
        bad = dict(want, sha256="0" * 64)
        st = ota_stage.Stage(bad, CHUNK, R)
        fetch(st, raw, None)
        with raises(ota.OtaError, "checksum mismatch"):
            asyncio.run(st.verify("host"))
        st = ota_stage.Stage(want, CHUNK, R)
        fetch(st, raw, None, 2)
        with raises(ota.OtaError, "download truncated: 512 of"):
            asyncio.run(st.verify("host"))
        raw3, want3 = bundle("3", board="esp32-devkitc")
        st = ota_stage.Stage(want3, CHUNK, R)
        fetch(st, raw3, None)
        with raises(ota.OtaError, "bundle is for board 'esp32-devkitc', this board is 'host'"):
            asyncio.run(st.verify("host"))
        assert main.slot(R) == "" and not _exists(R + "slot.json")
    finally:
        dev.unmount(MNT)


def test_download_resumes_from_the_last_chunk_on_flash():
    dev = RAMBlockDev(512, 96)
    fresh(dev)
    try:
        raw, want = bundle("2")
        st = ota_stage.Stage(want, CHUNK, R)
        assert st.begin() == 0
        fetch(st, raw, 0, 2)
        # a dropped connection, a reboot: the same bundle resumes where flash says
        assert ota_stage.Stage(want, CHUNK, R).begin() == 2
        # another bundle announced: starts from scratch
        raw2, want2 = bundle("3")
        assert ota_stage.Stage(want2, CHUNK, R).begin() == 0
        assert ota_stage.Stage(want, CHUNK, R).begin() == 0
    finally:
        dev.unmount(MNT)


@heapsize("128k")
def test_power_cut_at_every_flash_operation_boots_old_or_new():
    dev = RAMBlockDev(512, 96)
    raw1, want1 = bundle("1")
    raw2, want2 = bundle("2", extra=b"#" * 700)

    def committed_v1():
        fresh(dev)
        update(raw1, want1)
        main.slot(R)
        ota.write_slot({"cur": "app_a", "prev": "", "sum": want1["sha256"]}, R)

    committed_v1()
    dev.writes = 0
    update(raw2, want2)
    main.slot(R)  # the trial's boot
    total = dev.writes
    dev.unmount(MNT)
    seen = set()
    for cut in range(total + 1):
        committed_v1()
        dev.writes = 0
        dev.cut = cut
        try:
            update(raw2, want2)
            main.slot(R)
        except OSError:
            pass
        dev.unmount(MNT)
        dev.power_on()
        dev.mount(MNT)
        try:
            d = main.slot(R)
            v = slot_version(d)
            assert (d, v) in (("app_a", "1"), ("app_b", "2")), (cut, d, v)
            seen.add(v)
            if v == "2":  # on trial: the next boot without a commit goes back
                assert main.slot(R) == "app_a", cut
            else:  # the old app runs; the download resumes and the update completes
                assert update(raw2, want2) == "app_b", cut
                assert main.slot(R) == "app_b" and slot_version("app_b") == "2", cut
        finally:
            dev.unmount(MNT)
    assert seen == {"1", "2"} and total > 30, (seen, total)
    print("%d power cuts checked" % (total + 1))

