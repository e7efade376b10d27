# Entry point from main.py: the config and the board, then the app; and every way out of it
# (a crash, safe mode, Ctrl-C). A crash loop must not spin at full speed, and one that no
# reset cures ends in safe mode (uplink.safemode).
import asyncio
import sys
import time

from uplink import VERSION, ConfigError, log, transient
from uplink import board as boardmod  # resident: imported first in boot's transient, it would go
from uplink.app import RESET_DELAY_MS, App  # here, not at run(): main.py says clearly when it cannot load


def load_config():
    from uplink import config, platforms

    # SCHEMAS imports only the configured platform's module: the others would cost heap
    return config.load(config.PATH, platforms.SCHEMAS)


HOLD = "hold"  # = main.py's HOLD: one boot in maintenance, no app, no watchdog


def run():
    """Entry point from main.py. A crash, or an unexpected error at boot (a full filesystem,
    no memory), resets the board after a delay and counts for safe mode; safe mode waits,
    then resets. Returns (to the REPL) only on Ctrl-C."""
    with transient():  # boot's own code (uplink.startup, the config checker, safe mode's count)
        from uplink import startup

        booted = startup.boot()
        startup = None
    if booted is None:
        return  # the boot ended there: safe mode, a crash (both reset) or Ctrl-C
    cfg, board, cause, last = booted
    log.level = log.LEVELS.index(cfg["device"]["console"])
    log.info("boot", "uplink %s on %s (%s), reset cause %s" % (VERSION, board.name, cfg["device"]["name"], cause))
    if last:
        log.warn("boot", "back from safe mode (%s)" % last)
    if cfg["device"].get("romfs") and not __file__.startswith("/rom/"):
        with transient():  # a kept update's move into ROMFS, or the warning (uplink.ota_romfs)
            from uplink import ota_romfs

            ota_romfs.at_boot(cfg, board, __file__.rsplit("/", 1)[0])
            ota_romfs = None
    if cfg["device"].get("frozen") and not _frozen():
        # a copy on the filesystem (an OTA slot's, or one left there) comes first on sys.path
        log.warn("boot", "device.frozen is set, but the firmware runs from %s, not the image's frozen package: "
                 "its bytecode takes the heap (docs/hardware.md, \"Firmware frozen into the image\")"
                 % __file__.rsplit("/", 1)[0])
    try:
        app = App(cfg, board)
        app.safe_mode_reason = last
        asyncio.run(app.main())
        raise RuntimeError("the app returned")
    except KeyboardInterrupt:
        _interrupted(board)
    except ConfigError as e:
        safe_mode(board, str(e))
    except Exception as e:
        crash(board, "app crashed", e)


def _frozen():
    # only `uplink build --freeze` adds uplink/_frozen.py: a package that has it was frozen
    try:
        __import__("uplink._frozen")  # (written by the freeze, not in this tree)
        return True
    except ImportError:
        return False


def crash(board, what, e):
    """A crash exit: logged, counted for safe mode, then a reset after RESET_DELAY_MS (a
    crash loop must not spin at full speed)."""
    reason = "%s: %s: %s" % (what, type(e).__name__, e)
    if board is not None:
        board.leave()
    try:
        log.error("boot", reason)
        sys.print_exception(e)
        from uplink import safemode

        counted = safemode.crashed(reason)
    except Exception:  # MemoryError: what matters now is the reset
        counted = False
    if not counted:
        # a count that cannot be stored (full filesystem) cannot stop a crash loop: wait as
        # long as safe mode would before each reset instead
        safe_mode(board, reason + " (the crash count could not be stored)")
        return
    try:
        time.sleep_ms(RESET_DELAY_MS)
    except KeyboardInterrupt:
        _interrupted(board)
        return
    _reset(board)


def _reset(board):
    if board is None:
        board = boardmod.load(boardmod.DEFAULT)
    board.reset()


def _interrupted(board):
    """Ctrl-C: back to the REPL. An ESP32 watchdog the app armed cannot be stopped and
    would bite the user there, and a machine.Timer feeding it dies at the next soft reset
    (ports/esp32/machine_timer.c: a finaliser deinits it, run by gc_sweep_all in main.c's
    soft_reset_exit), which is what mpremote does first. So reset into the maintenance hold:
    the REPL, with no app and no watchdog, until the next reset."""
    log.warn("boot", "stopped by Ctrl-C")
    if board is not None:
        board.leave()
    if board is None or board.armed_watchdog() is None or not board.watchdog_outlives_program:
        return
    print("the watchdog is armed: resetting into the maintenance hold")
    try:
        with open(HOLD, "w") as f:
            f.write("ctrl-c")
    except OSError:
        pass
    board.reset()


def safe_mode(board, reason):
    """Stop the app for safemode.retry_s(), then reset for another try. The reason stays in
    safemode.txt for the next healthy run to report. Ctrl-C gives the REPL."""
    from uplink import safemode

    log.error("safe-mode", reason)
    safemode.note(reason)
    wait = safemode.retry_s()
    del safemode
    print("SAFE MODE: the app is stopped; it tries again in %d s. Fix the cause above, or Ctrl-C for the REPL." % wait)
    wdt = board.armed_watchdog() if board is not None else None
    try:
        while wait > 0:  # a watchdog the app armed before failing is fed meanwhile
            if wdt is not None:
                wdt.feed()
            time.sleep(min(wait, 5))
            wait -= 5
    except KeyboardInterrupt:
        _interrupted(board)
        return
    _reset(board)
