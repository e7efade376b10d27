import asyncio

import fake_hw
import fake_network as net
from mptest import raises
from uplink import board
from uplink.wifi import Wifi, WifiError

fake_hw.install()

HOME = {"ssid": "home", "password": "secret-home"}
SHOP = {"ssid": "shop", "password": "secret-shop"}


def make(networks, timeout_s=1, **kw):
    net.reset()
    net.SCAN_MS = 20  # scaled down like the timings below
    for ssid, pw, rssi in kw.get("aps", ()):
        net.add_ap(ssid, pw, rssi)
    w = Wifi(board.load("esp32-devkitc"), networks, timeout_s)
    w.POLL_MS = 10
    w.BACKOFF_MIN_MS = 40
    w.BACKOFF_MAX_MS = 200
    w.STABLE_MS = 300
    w.JOIN_POLL_MS = 5
    w.FRESH_MS = 150  # longer than one attempt and the driver's retry (2 x DELAY_MS)
    return w


def no_secrets(msg):
    assert "secret" not in msg, msg


async def test_joins_first_configured_network():
    w = make([HOME, SHOP], aps=[("home", "secret-home", -70), ("shop", "secret-shop", -40)])
    assert not w.connected and w.ip is None and w.rssi() is None
    await w.connect()
    # config order is the priority, not signal strength
    assert w.connected and w.ssid == "home"
    assert w.ip == "192.168.1.50" and w.rssi() == -70
    assert net.connects() == ["home"]


async def test_absent_network_skipped_by_scan():
    w = make([HOME, SHOP], aps=[("shop", "secret-shop", -50)])
    await w.connect()
    assert w.ssid == "shop"
    assert net.connects() == ["shop"]  # no time wasted on "home"


async def test_wrong_password_told_apart_from_missing():
    w = make([HOME, SHOP], aps=[("home", "nope", -50)])
    with raises(WifiError) as r:
        await w.connect()
    msg = str(r.value)
    assert msg == "home: wrong password; shop: not found", msg
    no_secrets(msg)
    assert not w.connected and w.ssid is None and w.last_error == msg


async def test_wrong_password_falls_back_to_next_network():
    w = make([HOME, SHOP], aps=[("home", "nope", -50), ("shop", "secret-shop", -80)])
    await w.connect()
    assert w.ssid == "shop" and net.connects() == ["home", "shop"]


async def test_nothing_visible_tries_all_hidden_included():
    w = make([HOME, SHOP])
    with raises(WifiError) as r:
        await w.connect()
    assert str(r.value) == "home: not found; shop: not found", str(r.value)
    assert net.connects() == ["home", "shop"]
    # a hidden network does not show up in a scan but can be joined
    w = make([HOME, SHOP])
    net.add_ap("home", "secret-home", -50, hidden=True)
    await w.connect()
    assert w.ssid == "home"


async def test_not_found_first_then_second_joins():
    # "home" fails with "not found"; the port still reports that code right after the
    # connect() to "shop" (it clears it only on GOT_IP), which must not count as shop's
    w = make([HOME, SHOP])
    net.add_ap("shop", "secret-shop", -60, hidden=True)
    await w.connect()
    assert w.connected and w.ssid == "shop", (w.last_error, net.LOG)
    assert net.connects() == ["home", "shop"]


async def test_stale_not_found_does_not_mask_a_wrong_password():
    w = make([HOME, SHOP])
    net.add_ap("shop", "other", -60, hidden=True)
    with raises(WifiError) as r:
        await w.connect()
    assert str(r.value) == "home: not found; shop: wrong password", str(r.value)


async def test_same_stale_code_still_reported():
    # both refuse the password: the second 202 is indistinguishable from the stale one
    # until an attempt's time has passed, then it is reported as what it is
    w = make([HOME, SHOP], aps=[("home", "x", -50), ("shop", "y", -60)])
    with raises(WifiError) as r:
        await w.connect()
    assert str(r.value) == "home: wrong password; shop: wrong password", str(r.value)
    # and a later pass still tries both for real: nothing is left over
    net.APS["shop"]["password"] = "secret-shop"
    await w.connect()
    assert w.ssid == "shop" and net.connects() == ["home", "shop", "home", "shop"]


async def test_one_network_is_joined_without_a_scan():
    # a scan blocks the board for ~1.5 s on the ESP32 and there is nothing to choose
    w = make([HOME], aps=[("home", "secret-home", -50)])
    await w.connect()
    assert w.ssid == "home" and ("scan",) not in net.LOG, net.LOG


async def watch_backoff(w):
    waits = []
    real = w._backoff

    async def backoff(delay):
        waits.append(delay)
        await real(delay)

    w._backoff = backoff
    return waits


async def test_router_up_late_single_network_joins():
    # a site power cut: the board is back before the router; run() keeps trying with backoff
    w = make([HOME])
    net.add_ap("home", "secret-home", -50, absent_for=6)
    waits = await watch_backoff(w)
    t = asyncio.create_task(w.run())
    try:
        assert await wait_for(lambda: w.connected and w.ssid, 10000), (w.last_error, net.LOG[-8:])
    finally:
        t.cancel()
    assert w.ssid == "home" and len(net.connects()) >= 2
    assert waits[:3] == [40, 80, 160], waits  # backing off between the failed passes


async def test_router_up_late_second_network_joins():
    # the preferred network is gone for good; the other one's router comes up late
    w = make([HOME, SHOP])
    net.add_ap("shop", "secret-shop", -50, absent_for=5)
    waits = await watch_backoff(w)
    t = asyncio.create_task(w.run())
    try:
        assert await wait_for(lambda: w.connected and w.ssid, 10000), (w.last_error, net.LOG[-8:])
    finally:
        t.cancel()
    assert w.ssid == "shop" and waits, waits


async def test_timeout_and_connect_failure():
    w = make([HOME, SHOP], timeout_s=0.3)
    net.add_ap("home", "secret-home", mode="hang")
    net.add_ap("shop", "secret-shop", mode="fail")
    with raises(WifiError) as r:
        await w.connect()
    assert str(r.value) == "home: timeout after 300 ms; shop: connection failed", str(r.value)
    # a failed attempt leaves the driver stopped, so the next connect is accepted
    net.APS["home"]["mode"] = "ok"
    await w.connect()
    assert w.ssid == "home"


async def test_handshake_timeout_means_wrong_password():
    # how ESP-IDF usually reports a bad WPA2 passphrase: reason 15 (the port shows
    # "connecting" while its driver retries), then 205 on the retry, shown as 202
    w = make([HOME], aps=[("home", "secret-home", -50)])
    net.APS["home"]["mode"] = "wpa2"
    net.APS["home"]["password"] = "other"
    with raises(WifiError, "home: wrong password"):
        await w.connect()


async def test_driver_retries_are_limited_so_the_reason_shows():
    # by default the ESP32 driver retries forever and status() says "connecting" for
    # reasons it does not list (here the WPA2 handshake timeout): the reason never shows
    w = make([HOME], aps=[("home", "nope", -50)], timeout_s=5)
    net.APS["home"]["mode"] = "wpa2"
    with raises(WifiError, "home: wrong password"):
        await w.connect()
    wl = w.board.wlan()
    assert wl.config("reconnects") == Wifi.RECONNECTS
    # the driver did its one retry, then gave up: no endless association attempts
    assert wl._tries == Wifi.RECONNECTS + 1 and wl._attempt is None


async def test_no_networks_configured():
    w = make([])
    with raises(WifiError, "no networks configured"):
        await w.connect()


async def test_host_board_is_always_online():
    w = Wifi(board.load("host"), [], 20)
    await w.connect()
    assert w.connected and w.ssid == "host" and w.ip == "127.0.0.1"
    assert isinstance(w.rssi(), int)


async def wait_for(cond, ms=3000):
    for _ in range(ms // 10):
        if cond():
            return True
        await asyncio.sleep_ms(10)
    return cond()


async def test_drop_then_return_reconnects():
    w = make([HOME], aps=[("home", "secret-home", -50)])
    await w.connect()
    t = asyncio.create_task(w.run())
    await asyncio.sleep_ms(50)
    # a short drop: the driver's own retry or ours, either way the link comes back
    net.drop()
    assert await wait_for(lambda: not w.connected or w.drops == 1)
    assert await wait_for(lambda: w.connected and w.drops == 1)
    # the AP reboots for longer than the driver retries: run() has to do it
    net.remove_ap("home")
    assert await wait_for(lambda: w.last_error == "home: not found")
    n = len(net.connects())
    net.add_ap("home", "secret-home", -50)
    assert await wait_for(lambda: w.connected and w.ssid == "home")
    assert len(net.connects()) > n and w.drops >= 1
    t.cancel()


async def test_ap_gone_moves_to_the_next_network_and_keeps_trying():
    w = make([HOME, SHOP], aps=[("home", "secret-home", -50)])
    await w.connect()
    t = asyncio.create_task(w.run())
    net.remove_ap("home")
    for _ in range(300):
        await asyncio.sleep_ms(10)
        if w.last_error:
            break
    assert not w.connected and "home: not found" in w.last_error, (w.connected, w.last_error, net.LOG)
    net.add_ap("shop", "secret-shop", -60)
    for _ in range(100):
        await asyncio.sleep_ms(20)
        if w.ssid:  # set once the join finished
            break
    assert w.connected and w.ssid == "shop", (w.connected, w.ssid, w.last_error, net.LOG[-12:])
    t.cancel()


async def test_flapping_link_backs_off():
    w = make([HOME], aps=[("home", "secret-home", -50)])
    waits = []
    real = w._backoff

    async def backoff(delay):
        waits.append(delay)
        await real(delay)

    w._backoff = backoff
    await w.connect()
    t = asyncio.create_task(w.run())
    net.FLAP_MS = 20  # every link dies soon after it comes up
    while w.drops < 7:
        await asyncio.sleep_ms(5)
    net.FLAP_MS = None
    # each quick drop doubles the wait, up to the cap
    assert waits[:4] == [40, 80, 160, 200], waits
    assert waits[4:7] == [200, 200, 200], waits
    while not w.connected:
        await asyncio.sleep_ms(5)
    # once up for STABLE_MS the backoff resets: the next drop reconnects at once (run()
    # may still be in its last backoff when the driver has the link back: wait that out too)
    await asyncio.sleep_ms(w.BACKOFF_MAX_MS + w.STABLE_MS + 200)
    n, drops = len(waits), w.drops
    net.drop()
    assert await wait_for(lambda: w.drops == drops + 1 and w.connected)
    assert len(waits) == n and w.drops == drops + 1, (waits, n)
    t.cancel()


def test_jitter_spreads_within_the_delay():
    w = make([HOME])
    seen = [w.jitter(1000) for _ in range(50)]
    assert all(500 <= x < 1000 for x in seen)
    assert len(set(seen)) > 10


async def test_passwords_never_logged():
    from uplink import log

    lines = []
    real = log._emit
    log._emit = lambda level, tag, msg: lines.append(msg)
    try:
        w = make([HOME, SHOP], aps=[("home", "wrong", -50), ("shop", "secret-shop", -60)])
        await w.connect()
        t = asyncio.create_task(w.run())
        net.remove_ap("shop")
        assert await wait_for(lambda: w.last_error is not None)
        net.add_ap("shop", "secret-shop", -60)
        assert await wait_for(lambda: w.connected and w.ssid == "shop")
        t.cancel()
    finally:
        log._emit = real
    assert lines and any("home: wrong password" in m for m in lines), lines
    for m in lines + [w.last_error or ""]:
        no_secrets(m)


async def test_run_outlives_driver_errors():
    # the radio refuses to start a few times (e.g. "Wifi Not Initialized"); run() must not die
    w = make([HOME], aps=[("home", "secret-home", -50)])
    real = net.WLAN.active
    fails = [3]

    def active(self, on=None):
        if on and fails[0]:
            fails[0] -= 1
            raise OSError("Wifi Not Initialized")
        return real(self, on)

    net.WLAN.active = active
    try:
        with raises(WifiError, "radio not started (Wifi Not Initialized)"):
            await w.connect()
        t = asyncio.create_task(w.run())
        ok = await wait_for(lambda: w.connected and w.ssid, 5000)
        t.cancel()
    finally:
        net.WLAN.active = real
    assert ok and not fails[0], (fails, w.last_error)


async def test_rejoining_tells_the_app_so_mqtt_retries_at_once():
    w = make([HOME], aps=[("home", "secret-home", -50)])
    ups = []
    w.on_up = lambda: ups.append(w.ssid)
    await w.connect()
    t = asyncio.create_task(w.run())
    net.remove_ap("home")
    assert await wait_for(lambda: w.last_error == "home: not found")
    assert ups == []  # nothing to tell while the link is down
    net.add_ap("home", "secret-home", -50)
    assert await wait_for(lambda: ups == ["home"])
    t.cancel()
