# A thermostat on ThingsBoard (docs/user_api.md): the setpoint is a shared attribute the
# dashboard sets, the outside temperature comes from a client-side RPC the rule chain answers,
# and what the device decided goes back as client attributes. Copy it to firmware/user.py.
#
# ThingsBoard side: a shared attribute "setpoint" on the device (a dashboard's knob sets it);
# a rule chain answering the client-side RPC "getWeather" with {"temp": <deg C>} (Rule chain:
# "RPC Request from Device" -> script -> "RPC Call Reply"); a server-side RPC "setMode"
# {"mode": "heat" | "off"} from a dashboard switch.
import time

from uplink import cloud

CITY = "Oslo"
WEATHER_EVERY_S = 600
HYSTERESIS = 0.5

_s = {"setpoint": 20.0, "mode": "heat", "temp": 18.0, "heating": False, "outside": None, "asked": None}


def read():
    # a room that warms while the heater is on and cools towards outside when it is off
    s = _s
    outside = s["outside"] if s["outside"] is not None else 5
    s["temp"] += 0.3 if s["heating"] else (outside - s["temp"]) * 0.02
    _control()
    return {"temperature": round(s["temp"], 2), "heating": s["heating"]}


def _control():
    s = _s
    if s["mode"] != "heat":
        s["heating"] = False
    elif s["temp"] < s["setpoint"] - HYSTERESIS:
        s["heating"] = True
    elif s["temp"] > s["setpoint"] + HYSTERESIS:
        s["heating"] = False


async def changed(values):
    # shared-attribute updates, and the current values once after every (re)connect
    s = _s
    if "setpoint" in values:
        s["setpoint"] = float(values["setpoint"])
        _control()
        print("THERMOSTAT setpoint %s" % s["setpoint"])
        # client attributes go through the outbox: they reach ThingsBoard even after an outage
        await cloud.set_attributes({"setpoint_applied": s["setpoint"], "heating": s["heating"]})
    now = time.ticks_ms()
    if s["asked"] is None or time.ticks_diff(now, s["asked"]) > WEATHER_EVERY_S * 1000:
        s["asked"] = now
        try:
            w = await cloud.rpc("getWeather", {"city": CITY}, timeout_s=10)
        except cloud.Timeout as e:  # no rule chain answering, or offline: keep the last value
            print("THERMOSTAT weather: %s" % e)
            return
        s["outside"] = w.get("temp") if isinstance(w, dict) else None
        print("THERMOSTAT outside %s" % s["outside"])
        await cloud.set_attributes({"outside_temp": s["outside"]})


cloud.on_change(changed, keys=["setpoint"])


def handle(cmd):
    # server-side RPC from the dashboard
    if cmd.name == "setMode":
        mode = cmd.params.get("mode")
        if mode not in ("heat", "off"):
            raise ValueError("setMode: mode must be heat or off, got %r" % (mode,))
        _s["mode"] = mode
        _control()
        return {"mode": mode, "heating": _s["heating"]}
    if cmd.name == "getState":
        return {"setpoint": _s["setpoint"], "mode": _s["mode"], "heating": _s["heating"]}
    raise ValueError("unknown command %r" % cmd.name)
