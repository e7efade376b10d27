# A gateway's sub-device readings (user.read_devices() -> {sub-device name: values}), stored
# beside the device's own reading with its time. Loaded only where the platform runs a
# gateway session (adapter.gateway): other devices do not carry it.
from uplink import log
from uplink.telemetry import drop_unencodable


def store(telemetry, reading):
    try:
        per_device = telemetry.app.user.read_devices() or {}
    except Exception as e:
        log.user_exc("user", "read_devices() failed", e)
        return
    for name in per_device:
        values = per_device[name]
        if isinstance(values, dict):
            drop_unencodable(values)
            log.read(values, name)
        r = {"values": values, "device": name}
        for k in ("ts", "boot", "up"):  # the same time as the device's own reading
            if k in reading:
                r[k] = reading[k]
        telemetry.store(r)
