# A relay switched from the Blynk app, with log events and a widget that shows the state
# (docs/user_api.md). Copy it to firmware/user.py.
#
# Blynk template: a Boolean datastream "Switch" (a Switch widget; Advanced settings: "Sync
# with latest server value" on, so the device learns the state after every reconnect), a
# Boolean datastream "Relay" (what the relay really does), an event with the code "switched",
# and a metadata field "Serial Number".
from uplink import cloud

_s = {"on": False, "serial": None}


def read():
    return {"Relay": _s["on"]}


async def changed(values):
    # datastream writes from the app, and every datastream's value after each (re)connect
    if "Switch" in values:
        on = bool(values["Switch"])
        if on != _s["on"]:
            _s["on"] = on
            print("SWITCH relay %s" % ("on" if on else "off"))
            # events go through the outbox: the notification is not lost to an outage
            await cloud.event("switched", "relay %s from the app" % ("on" if on else "off"))
        # a widget property is display state: sent now (again after each reconnect)
        await cloud.prop("Switch", "color", "#23C48E" if on else "#D3435C")
    if _s["serial"] is None:
        try:
            _s["serial"] = await cloud.meta("Serial Number", timeout_s=10)
            print("SWITCH serial %s" % _s["serial"])
        except cloud.Timeout as e:
            print("SWITCH serial: %s" % e)


cloud.on_change(changed)
