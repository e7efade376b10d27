# Stand-ins shared by tests/firmware/test_platform_*.py: a checked config, the app context an
# adapter gets, and an MQTT client that records what the adapter sends.
import json

from uplink import config, platforms


def make_cfg(kind, **keys):
    p = {"kind": kind}
    p.update(keys)
    doc = {"device": {"name": "greenhouse-1", "board": "esp32-devkitc"}, "platform": p}
    return config.parse(json.dumps(doc), platforms.SCHEMAS)


class Board:
    name = "esp32-devkitc"


class Ctx:
    """uplink.context.Context's names, with nothing behind them."""

    version = "1.2.3"
    ota_watch = False
    ota = None
    new_client = None  # fn(**kw) -> a client (Context.new_client), when a test needs one

    def __init__(self, ip="10.0.0.7"):
        self.board = Board()
        self.ip = ip
        self.clock = None
        self.saved = []

    now = None  # Context.now_ms(): epoch ms, None while the clock is not known

    def now_ms(self):
        return self.now

    def fw(self):
        return ("uplink-" + self.board.name, self.version)

    def save_config(self, cfg=None):
        self.saved.append(json.loads(json.dumps(cfg)))


class Client:
    connections = 1  # as MQTTClient's: CONNACKs so far

    def __init__(self, answer=None):
        self.published = []  # (topic, payload, qos)
        self.subscribed = []
        self.disconnected = False
        self.on_message = None
        self.answer = answer  # fn(topic, payload) -> (topic, payload) | None: the "server"
        self.pid = 0

    async def publish(self, topic, payload, qos=0, retain=False, wait=True):
        self.published.append((topic, bytes(payload), qos))
        self.pid += 1
        if self.answer is not None:
            a = self.answer(topic, payload)
            if a is not None and self.on_message is not None:
                self.on_message(a[0], a[1], False)
        return self.pid

    async def connect(self):
        self.connections += 1

    async def subscribe(self, topic, qos=0):
        self.subscribed.append((topic, qos))

    async def disconnect(self):
        self.disconnected = True


def adapter(kind, ctx=None, **keys):
    return platforms.load(kind).Adapter(make_cfg(kind, **keys), ctx or Ctx())


def forget(name):
    """uplink.platforms.<name> as if never imported (`from uplink.platforms import x` and
    `from uplink.platforms.x import y` find the package's attribute first)."""
    import sys

    sys.modules.pop("uplink.platforms." + name, None)
    if name in platforms.__dict__:
        delattr(platforms, name)


def loaded(name):
    import sys

    return "uplink.platforms." + name in sys.modules


def reading(values, ts=None, device=None):
    r = {"ts": ts, "values": values}
    if device is not None:
        r["device"] = device
    return r


def check_cover(out, n):
    """encode()'s tuples cover exactly n readings, in order."""
    assert sum(t[2] for t in out) == n, out
