# Runs after boot.py on a reset (ports/esp32/main.c runs main.py only in friendly-REPL mode,
# so the soft reset mpremote does to enter the raw REPL never starts the app).
# A HOLD file, written by `uplink deploy` or by the app on Ctrl-C, keeps this one boot in
# maintenance: the app is not started, so no watchdog is armed, and the REPL is free for the
# tools. It is removed as it is honoured: the next reset starts the app again.
import os

HOLD = "hold"

why = None
try:
    with open(HOLD) as f:
        why = f.read(40).strip() or "hold"
    os.remove(HOLD)
except OSError:
    why = None  # none, or one that cannot be removed: never a hold that outlives its boot
if why is not None:
    print("MAINTENANCE HOLD (%s): app not started, watchdog not armed; reset to start it." % why)
else:
    import gc

    gc.collect()
    try:
        from uplink import app
    except Exception as e:  # a half-copied firmware, no memory: not the REPL for good
        import sys
        import time

        sys.print_exception(e)
        print("uplink: the firmware cannot start; reset in 30 s (Ctrl-C for the REPL)")
        time.sleep(30)
        try:
            import machine

            machine.reset()
        except (ImportError, AttributeError):  # the host board's unix port has no reset()
            sys.exit(75)
    else:
        app.run()
