# A traffic light and a display beside a weighbridge, driven by the weighbridge's own readings
# on Weightron (docs/user_api.md). Copy it to your project's user.py (`uplink init`).
#
# The board watches the weighbridge (`watch = ["devices/bridge-1"]` in fleet.toml) and
# publishes nothing: Weightron documents its topic tree for subscribing, and writing needs
# the Devices write permission, which is off by default. Each weight the bridge reports
# reaches changed() as {"devices/bridge-1": {"$timestamp": ..., "$native": {"weight": kg}}}.
from uplink import cloud

BRIDGE = "devices/bridge-1"
EMPTY_KG = 200  # below this the bridge counts as empty: green, the next truck may drive on
MAX_KG = 44000  # above this: red, the truck must not leave (the legal gross weight here)


def _light(kg):
    if kg < EMPTY_KG:
        return "green"
    return "red" if kg > MAX_KG else "amber"


def show(kg, light):
    # Replace with your hardware: e.g. machine.Pin(LIGHT_PINS[light]).on() and a
    # seven-segment display. Printing keeps the example runnable on the host board.
    print("WEIGHBRIDGE %d kg %s" % (kg, light))


def changed(values):
    doc = values.get(BRIDGE)
    native = doc.get("$native") if isinstance(doc, dict) else None
    kg = native.get("weight") if isinstance(native, dict) else None
    if not isinstance(kg, (int, float)):
        print("WEIGHBRIDGE no weight in %r" % (doc,))
        return
    show(kg, _light(kg))


def read():
    # nothing to publish (publish is off); the app still asks every interval
    return {}


cloud.on_change(changed)
