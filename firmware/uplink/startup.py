# Boot-only steps: the config, the board and safe mode's check (runner.run), then Wi-Fi and
# the clock (App.main). Both run them in a uplink.transient, so this code leaves the heap
# after; the board, Wifi and Clock objects they make live on with the app (nothing imports
# their modules again, so no second copy is ever loaded).
import asyncio

from uplink import ConfigError, log


def boot():
    """(cfg, board, reset cause, the last safe-mode reason), or None when the boot ended here
    (safe mode, a crash: both reset; Ctrl-C)."""
    from uplink import board as boardmod
    from uplink import runner

    try:
        cfg = runner.load_config()
    except Exception as e:
        # ConfigError: safe mode; anything else (no memory for the platform module): a crash,
        # counted. Either once the board is known and the count checked: a config that fails
        # at every boot must still end in safe mode, not a reset loop
        cfg = e
    try:
        board = boardmod.load(cfg["device"]["board"] if isinstance(cfg, dict) else boardmod.DEFAULT)
    except Exception as e:
        runner.crash(None, "boot failed", e)
        return None
    from uplink import safemode

    try:
        cause = board.reset_cause()
        safemode.enter_boot(cause)
        if not isinstance(cfg, dict):
            raise cfg
        return cfg, board, cause, safemode.last_reason()
    except KeyboardInterrupt:
        log.warn("boot", "stopped by Ctrl-C")
    except (safemode.SafeMode, ConfigError) as e:
        runner.safe_mode(board, str(e))
    except Exception as e:
        runner.crash(board, "boot failed", e)
    return None


async def network(app):
    if app.board.backend == "host" and not app.cfg["wifi"]["networks"]:
        # the PC is already online: no Wi-Fi manager to keep in the heap
        app.wifi = app.board.wired()
        return
    from uplink.wifi import Wifi, WifiError

    w = app.wifi = Wifi(app.board, app.cfg["wifi"]["networks"], app.cfg["wifi"]["timeout_s"])
    delay = 2
    while True:
        try:
            await w.connect()
            break
        except WifiError as e:
            log.error("wifi", "%s; retrying in %d s" % (e, delay))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60)
    log.info("wifi", "up, ip %s" % w.ip)
    w.on_up = app.network_back
    app.keep("wifi", w.run)


async def clock(app):
    from uplink.clock import Clock

    ntp = app.cfg["ntp"]
    c = app.clock = Clock(app.board, ntp["servers"], ntp["timeout_ms"], ntp["resync_s"])
    if ntp["servers"]:
        app.keep("clock", c.run)
    else:  # e.g. the host board, whose clock is the PC's
        log.info("clock", "no NTP servers configured: the board's own clock is used")
    url = app.adapter.url
    if url[: url.find(":")] in ("mqtts", "wss", "https") and not app.cfg["platform"]["insecure"]:
        # Certificate checks need the real date; the platform's own time (ThingsBoard getTime,
        # Blynk utc) only comes over the connection. NTP must answer, or the RTC be set already.
        if not c.valid():
            log.info("clock", "waiting for the time before TLS")
            c.blocked_hint = ("; TLS to the platform waits for it (the certificate "
                              "check needs the date): UDP port 123 must reach them")
        await c.wait_valid()
        c.blocked_hint = Clock.blocked_hint
