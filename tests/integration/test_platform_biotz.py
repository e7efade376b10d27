"""Biotz end to end: the whole firmware on the host board, behind the Biotz broker profile
(username = Device ID + password, its own publish/data and subscribe topics only, flat JSON
with RFC 3339 UTC timestamps)."""

import datetime
import json
import time

import pytest

from tests.integration.broker_profiles import (
    Biotz,
    e2e_config,
    handled,
    ntp_server,
)
from tests.services import mosquitto_bin

pytestmark = pytest.mark.skipif(mosquitto_bin() is None, reason="mosquitto not installed")

BASE = "biotz/1/0/cust-9/dev-5/"
FW = {"name": "fw-2.0", "download-url": "https://fw.example/2.0.bin", "size": 1024,
      "md5": "0" * 32, "sha1": "0" * 40, "sha256": "0" * 64}


def seqs(payloads):
    """The readings' numbers in Biotz telemetry messages (an object or an array of them)."""
    out = [0]
    for p in payloads:
        doc = json.loads(p)
        out += [item["seq"] for item in (doc if isinstance(doc, list) else [doc])]
    return out


def cfg(url, password="bz-passw0rd"):
    return e2e_config("biotz", url, device_id="dev-5", customer_id="cust-9", password=password)


def test_telemetry_actions_and_retained_firmware_update(env, tmp_path):
    proxy = env.proxy(Biotz("cust-9", {"dev-5": "bz-passw0rd"}))
    cloud = env.cloud()
    # retained before the device ever connects, as Biotz keeps it
    cloud.send(BASE + "subscribe/firmware/update", FW, retain=True)
    board = env.board(cfg(proxy.url()))
    msgs = cloud.wait(lambda t, _: t == BASE + "publish/data/telemetry", console=board.console)
    doc = json.loads(msgs[0][1])
    for item in doc if isinstance(doc, list) else [doc]:
        assert item["temp"] == 21.5 and item["seq"] >= 1
    assert proxy.accepted()[0][0] == "dev-5"
    cloud.send(BASE + "subscribe/action/echo", {"valve": 3})
    board.wait_for_line("HANDLED echo")
    # the firmware update is reported once, and again never, however often it is redelivered
    board.wait_for_line("HANDLED firmware")
    assert (tmp_path / "board" / "biotz_firmware").exists()
    n = len(proxy.accepted())
    proxy.drop_clients()
    proxy.wait_for(lambda p: len(p.accepted()) > n, what="a reconnect")
    # The sentinel: a reading first sent after the reconnect reaches the cloud. The device
    # subscribes before it publishes on a connection, so mosquitto queued the retained
    # firmware/update for it before this; an action sent now is delivered after that, and
    # the device runs commands in arrival order (one FIFO queue).
    top = max(seqs(proxy.published_to(BASE + "publish/data/telemetry")))
    cloud.wait(lambda t, p: t == BASE + "publish/data/telemetry" and max(seqs([p])) > top,
               console=board.console)
    cloud.send(BASE + "subscribe/action/echo", {"after": "reconnect"})
    board.wait_for_line('HANDLED echo {"after": "reconnect"}')
    assert len(handled(board, "firmware")) == 1, board.console()
    assert proxy.violations == []
    assert "bz-passw0rd" not in board.console()


def test_timestamps_are_rfc3339_utc(env):
    proxy = env.proxy(Biotz("cust-9", {"dev-5": "bz-passw0rd"}))
    cloud = env.cloud()

    def stamped():
        out = []
        for _, p in cloud.got(lambda t, _: t == BASE + "publish/data/telemetry"):
            doc = json.loads(p)
            out += [i for i in (doc if isinstance(doc, list) else [doc]) if "timestamp" in i]
        return out

    with ntp_server() as ntp:
        board = env.board(e2e_config("biotz", proxy.url(), ntp=[ntp], device_id="dev-5", customer_id="cust-9",
                                     password="bz-passw0rd"))
        cloud.wait(lambda t, _: len(stamped()) >= 2, console=board.console)
    for item in stamped():
        when = datetime.datetime.fromisoformat(item["timestamp"].replace("Z", "+00:00"))
        assert item["timestamp"].endswith("Z")
        assert abs(when.timestamp() - time.time()) < 60, item
    assert proxy.violations == []  # the profile checked the RFC 3339 form of every one


def test_wrong_password_is_refused_and_reported(env):
    proxy = env.proxy(Biotz("cust-9", {"dev-5": "bz-passw0rd"}))
    env.cloud()
    board = env.board(cfg(proxy.url(), password="bz-wr0ng"))
    board.wait_for_line("refused our credentials")
    assert proxy.connects and all(c[2] == 4 for c in proxy.connects)
    assert not proxy.published
    assert "bz-wr0ng" not in board.console()
    assert proxy.violations == []


SEQ_USER = """
_n = [0]
def read():
    _n[0] += 1
    return {"seq": _n[0]}
"""


def test_http_ingestion_with_the_relays_id_token_loses_nothing(tmp_path):
    """transport = "http": the outbox drains to HTTP ingestion with the id_token the relay
    got by the password grant; a refused token is renewed once, a refused POST is kept and
    sent again, so every reading arrives, in order."""
    from tests.integration.hostboard import HostBoard
    from tests.oidc_provider import OIDCService

    svc = OIDCService().start()
    board = None
    p = svc.provider

    def seqs():
        with p._lock:
            bodies = list(p.ingested)
        out = []
        for b in bodies:
            out += [o["seq"] for o in (b if isinstance(b, list) else [b])]
        return out

    def wait(pred, timeout=40.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred(seqs()):
                return True
            time.sleep(0.05)
        return False

    try:
        config = {
            "device": {"name": "bz-1", "board": "host"},
            "ntp": {"servers": []},
            "platform": {
                "kind": "biotz", "device_id": "dev-42", "customer_id": "c-1",
                "transport": "http", "ingest_url": p.base, "ca": "ingest_ca.der",
                "credentials": {"source": "relay", "url": svc.url, "ca": "relay_ca.der",
                                "device_id": "bz-1", "key": svc.keys["bz-1"], "min_life_s": 60},
            },
            "telemetry": {"interval_ms": 300, "health": False},
            "outbox": {"max_bytes": 200000},
        }
        files = {"ingest_ca.der": p.pki.ca_der.read_bytes(),
                 "relay_ca.der": svc.pki.ca_der.read_bytes()}
        board = HostBoard(tmp_path / "board", config, user_py=SEQ_USER, files=files).start()
        assert wait(lambda s: len(s) >= 3), "nothing ingested; console:\n" + board.console()
        with p._lock:
            p.reject_ingest = 2  # the POST and its one retry with a fresh id_token: both 401
        before = max(seqs())
        assert wait(lambda s: max(s) >= before + 10), "stalled; console:\n" + board.console()
        got = seqs()
        assert sorted(set(got)) == list(range(1, max(got) + 1)), "a reading is missing"
        with p._lock:
            log = list(p.ingest_log)
        assert [e["ok"] for e in log].count(False) == 2 and log[-1]["ok"]
        console = board.console()
        assert "Biotz ingestion" in console and "answered HTTP 401" in console
        assert svc.keys["bz-1"] not in console and "bz-passw0rd" not in console
    finally:
        if board is not None:
            board.stop()
        svc.stop()
