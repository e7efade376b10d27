# Runs after boot.py on a reset (ports/esp32/main.c runs main.py only in friendly-REPL mode,
# so the soft reset mpremote does to enter the raw REPL never starts the app).
# A HOLD file, written by `uplink deploy` or by the app on Ctrl-C, keeps this one boot in
# maintenance: the app is not started, so no watchdog is armed, and the REPL is free for the
# tools. It is removed as it is honoured: the next reset starts the app again.
import os
import sys

HOLD = "hold"
SLOT = "slot.json"  # = uplink.ota.SLOT: which app slot boots (docs/ota.md)
TRIAL_S = 600  # = uplink.ota_trial.TRIAL_S: a trial's length when its bundle does not say
# = uplink.board.RESET_MARK: the last reset was the firmware's, not a panic. The app's boot takes
# it (uplink.safemode); a boot without the app takes it here, so it never covers a later reset.
MARK = "reset.mark"
on_trial = 0  # set by slot() for a boot on trial: its watchdog timeout (ms), the bundle's trial_s


def slot(root=""):
    """The app directory to boot: "" (the app deployed over USB, at the root) or an OTA slot.
    A slot on trial gets one boot: the next boot without a commit by uplink.ota (a crash, the
    watchdog, a power cut, the trial timer) boots the previous app instead."""
    global on_trial
    import json

    on_trial = 0
    try:
        with open(root + SLOT) as f:
            s = json.load(f)
        cur = s.get("cur") or ""
        if cur:
            os.stat(root + cur + "/bundle.json")  # written last by the install: a whole slot
    except (OSError, ValueError, AttributeError):
        return ""
    t = s.get("trial")
    if t is None:
        return cur
    if t:
        s["failed"], cur = cur, s.get("prev") or ""
        s["cur"] = cur
        del s["trial"]
        try:  # the crash that ended the trial (uplink.safemode), before the next boot's app overwrites it
            with open(root + "crashes.json") as f:
                s["why"] = json.load(f).get("last")
        except (OSError, ValueError, AttributeError):
            pass
    else:
        s["trial"] = 1
    try:  # temp + rename: a power cut leaves the old pointer or the new one
        with open(root + SLOT + ".tmp", "w") as f:
            json.dump(s, f)
        os.rename(root + SLOT + ".tmp", root + SLOT)
    except OSError:
        return s.get("prev") or ""  # a trial that cannot be counted does not run
    if not t:
        try:  # (uplink.ota reads trial_s too)
            with open(root + cur + "/bundle.json") as f:
                on_trial = int(json.load(f).get("trial_s", TRIAL_S)) * 1000
        except (OSError, ValueError, AttributeError, TypeError):
            on_trial = TRIAL_S * 1000
    return cur


def unmark():
    try:
        os.remove(MARK)
    except OSError:
        pass


why = None
try:
    with open(HOLD) as f:
        why = f.read(40).strip() or "hold"
    os.remove(HOLD)
except OSError:
    why = None  # none, or one that cannot be removed: never a hold that outlives its boot
if __name__ != "__main__":
    pass  # imported by a test for slot()
elif why is not None:
    unmark()
    print("MAINTENANCE HOLD (%s): app not started, watchdog not armed; reset to start it." % why)
else:
    import gc

    app_dir = slot()
    if app_dir:
        sys.path.insert(0, app_dir)  # its uplink/ and user code win over the root's
    gc.collect()
    try:
        if on_trial:
            # The watchdog from here, before Wi-Fi and the clock: a trial that never reaches the
            # app's supervisor (which feeds it, shortened) resets, and the next boot rolls back.
            from uplink import board

            board.load(board.DEFAULT).watchdog(on_trial)
        from uplink import runner

        runner.run()  # (catches what the app raises; not a MemoryError before it has a board)
    except Exception as e:  # a half-copied firmware, no memory: not the REPL for good
        import time

        sys.print_exception(e)
        print("uplink: the firmware cannot start; reset in 30 s (Ctrl-C for the REPL)")
        unmark()  # this reset is a crash: safe mode counts it
        time.sleep(30)
        try:
            import machine

            machine.reset()
        except (ImportError, AttributeError):  # the host board's unix port has no reset()
            sys.exit(75)
