# Blynk's side of uplink.cloud: what is not a reading (docs.blynk.io .../device-mqtt-api/
# topic-structure).
from uplink.platforms import topic_ok
from uplink.platforms.blynk import plain_text


class CloudApi:
    """uplink.cloud's calls on Blynk (adapter.cloud_api()); encode() hands it uplink.cloud's
    records too.

    An optional part of an adapter is an object of a class in its own module, made by the
    adapter on first need (this one: the first time uplink.cloud asks for it, or a record is
    sent), holding its adapter and using only the adapter's public names. A device that does
    not use the part never imports its module: on an ESP32 every module's bytecode lives in
    the heap."""

    def __init__(self, adapter):
        self.adapter = adapter

    def _mine(self, what, name):
        own = self.adapter.own_prefix
        if own is None:
            raise ValueError("%s: a Blynk gateway session (OAuth client or mgmt_device) has no device of its own"
                             % what)
        if not topic_ok(name):
            raise ValueError("%s: %r cannot be a topic level (empty, or has / + #)" % (what, name))
        return own

    def event_message(self, code, text):
        """Log event: event/<event code>, the description as plain text (empty: the event's own
        description). docs.blynk.io/en/getting-started/events-tutorial: the code is the
        template's EVENT_CODE."""
        return (self._mine("event", code) + "event/" + code, text.encode())

    def prop_message(self, datastream, name, value):
        """Widget property: ds/<datastream>/prop/<property>, the value as plain text
        (docs.blynk.io .../device-mqtt-api/widget-properties)."""
        self._mine("property", name)
        return (self._mine("property", datastream) + "ds/" + datastream + "/prop/" + name,
                plain_text(value).encode())

    def meta_request(self, field):
        """Metadata read: get/meta with the field name; answered on downlink/meta/<field>
        (topic-structure)."""
        return (self._mine("metadata", field) + "get/meta", field.encode())

    def sync_request(self, keys):
        """For uplink.cloud.on_change after a connect: get/ds with the names, else get/ds/all
        (every datastream with "Sync with latest server value" on, docs.blynk.io
        .../device-mqtt-api/datastreams); None when platform.sync asked already."""
        a = self.adapter
        own = a.own_prefix
        if own is None or (not keys and a.cfg["platform"].get("sync")):
            return None
        if keys:
            return (own + "get/ds", ",".join(keys).encode())
        return (own + "get/ds/all", b"")

    def record(self, r, k, out):
        """encode() of an uplink.cloud record (a reading with "k"): "e", a log event."""
        if k != "e":
            out.append((None, ("a %r record is not for Blynk" % k).encode(), 1))
            return
        try:
            topic, payload = self.event_message(r["code"], r.get("text") or "")
        except ValueError as e:
            out.append((None, str(e).encode(), 1))
            return
        # a description too long for one message is cut, the event itself still counts
        room = self.adapter.room(topic)
        if len(payload) > room:
            i = room
            while i and payload[i] & 0xC0 == 0x80:  # not inside a UTF-8 character
                i -= 1
            payload = payload[:i]
        out.append((topic, payload, 1))
