# Your device's own readings and commands. The app calls read() every telemetry interval and
# handle(cmd) for every command it does not know itself. Keep both quick: they run inside the
# app's loop (an await is fine, a blocking sleep is not).
import time

_t0 = time.ticks_ms()
_led = {"on": False}


def read():
    """Return this interval's readings: a flat dict of name -> number, bool or short text."""
    # Example: a slowly varying "temperature" so the demo has something to plot.
    # Replace with your sensors, e.g. {"temperature": dht.temperature()}.
    t = time.ticks_diff(time.ticks_ms(), _t0) // 1000
    return {"temperature": 20 + (t % 60) / 10, "led": _led["on"]}


def handle(cmd):
    """A command from the cloud: return a JSON-able result (the reply), or raise ValueError."""
    if cmd.name in ("setLed", "led"):
        _led["on"] = bool(cmd.params.get("on", cmd.params.get("value")) if isinstance(cmd.params, dict) else cmd.params)
        return {"led": _led["on"]}
    raise ValueError("unknown command %r" % cmd.name)
