# Blynk's side of uplink.cloud: what is not a reading (docs.blynk.io .../device-mqtt-api/
# topic-structure). Imported by platforms/blynk.py at the first use (Adapter.__getattr__ puts
# these functions on the class as methods; encode() calls record for an "e" record): only a
# device whose user.py uses uplink.cloud pays for the bytecode.
from uplink.platforms import topic_ok
from uplink.platforms.blynk import _text


def _mine(self, what, name):
    if self._own is None:
        raise ValueError("%s: an OAuth gateway session has no device of its own" % what)
    if not topic_ok(name):
        raise ValueError("%s: %r cannot be a topic level (empty, or has / + #)" % (what, name))
    return self._own


def event_message(self, code, text):
    """Log event: event/<event code>, the description as plain text (empty: the event's own
    description). docs.blynk.io/en/getting-started/events-tutorial: the code is the
    template's EVENT_CODE."""
    return (_mine(self, "event", code) + "event/" + code, text.encode())


def prop_message(self, datastream, name, value):
    """Widget property: ds/<datastream>/prop/<property>, the value as plain text
    (docs.blynk.io .../device-mqtt-api/widget-properties)."""
    _mine(self, "property", name)
    return (_mine(self, "property", datastream) + "ds/" + datastream + "/prop/" + name,
            _text(value).encode())


def meta_request(self, field):
    """Metadata read: get/meta with the field name; answered on downlink/meta/<field>
    (topic-structure)."""
    return (_mine(self, "metadata", field) + "get/meta", field.encode())


def sync_request(self, keys):
    """For uplink.cloud.on_change after a connect: get/ds with the names, else get/ds/all
    (every datastream with "Sync with latest server value" on, docs.blynk.io
    .../device-mqtt-api/datastreams); None when platform.sync asked already."""
    if self._own is None or (not keys and self.cfg["platform"].get("sync")):
        return None
    if keys:
        return (self._own + "get/ds", ",".join(keys).encode())
    return (self._own + "get/ds/all", b"")


def record(self, r, k, out):
    """encode() of an uplink.cloud record (a reading with "k"): "e", a log event."""
    if k != "e":
        out.append((None, ("a %r record is not for Blynk" % k).encode(), 1))
        return
    try:
        topic, payload = event_message(self, r["code"], r.get("text") or "")
    except ValueError as e:
        out.append((None, str(e).encode(), 1))
        return
    # a description too long for one message is cut, the event itself still counts
    room = self._room(topic)
    if len(payload) > room:
        i = room
        while i and payload[i] & 0xC0 == 0x80:  # not inside a UTF-8 character
            i -= 1
        payload = payload[:i]
    out.append((topic, payload, 1))
