"""The fleet examples in README.md and docs/platforms.md are proven, as written.

Every fenced ```toml block holding a [devices.NAME...] table passes the real `uplink
validate` (secrets set, so the references resolve). Then, per cloud, README's example is
provisioned with the real `uplink provision` and its config.json runs on the host board
against that cloud's broker profile until the broker acknowledges the first reading
(Weightron's example only watches, as Weightron's topics are documented for: there, until a
watched value reaches user.py).

What is overridden, and only that, because the examples name the clouds' own hosts and
this test runs offline: the broker address (host:port; the scheme, TLS or secure WebSocket,
and the path stay as written, served by a TLS/WSS front with the test CA in front of the
profile proxy) and the CA file (the test CA instead of the cloud's shipped root). The
Weightron example's token relay (`[relay] url`, a LAN address) is the test's relay in front
of the loopback OIDC provider: its address, CA and device key are overridden likewise.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import threading
import time
from pathlib import Path

import pytest

from tests.host.uplink_helpers import Env
from tests.integration import broker_profiles as bp
from tests.integration.hostboard import HostBoard
from tests.services import mosquitto_bin

pytestmark = pytest.mark.skipif(mosquitto_bin() is None, reason="mosquitto not installed")

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("README.md", "docs/platforms.md")
PUBACK = 4


def examples() -> list[tuple[str, str]]:
    """(where, toml text) of every fenced toml block with a device table. Blocks without
    one are fragments of a table shown beside a full example (docs/platforms.md's Blynk
    gateway keys): not a fleet file on their own."""
    out = []
    for src in SOURCES:
        text = (REPO / src).read_text()
        for m in re.finditer(r"^```toml\n(.*?)^```", text, re.S | re.M):
            if re.search(r"^\[devices\.", m.group(1), re.M):
                out.append((f"{src}:{text[:m.start()].count(chr(10)) + 1}", m.group(1)))
    return out


def secret_values(text: str) -> dict[str, str]:
    """A value for every "secret:NAME" the example references (UPLINK_SECRET_NAME)."""
    return {n: f"{n}-value-7" for n in re.findall(r'"secret:([A-Za-z0-9_.-]+)"', text)}


def env_for(tmp_path: Path, text: str) -> Env:
    e = Env(tmp_path, text)
    e.env.update({f"UPLINK_SECRET_{n.upper()}": v for n, v in secret_values(text).items()})
    return e


def test_there_are_examples_of_every_cloud():
    kinds = {re.search(r'kind\s*=\s*"(\w+)"', t).group(1) for _, t in examples()}  # type: ignore[union-attr]
    assert kinds == {"thingsboard", "blynk", "weightron", "biotz"}
    assert any(w.startswith("README.md") for w, _ in examples())


@pytest.mark.parametrize("where,text", examples(), ids=[w for w, _ in examples()])
def test_example_passes_uplink_validate(tmp_path, where, text):
    r = env_for(tmp_path, text).run_process("validate")
    assert r.code == 0, f"{where}:\n{text}\n{r.output}"


# -- the host board against the cloud's profile ---------------------------------------------
class Front:
    """The example's transport (mqtts:// TLS, or wss:// secure WebSocket with the MQTT
    subprotocol) on a loopback port, with the test CA's certificate for localhost, in front
    of the profile proxy's plain MQTT. It reads the MQTT packets passing through to tell
    when the broker acknowledged a reading (a PUBACK for a QoS 1 PUBLISH of the device)."""

    def __init__(self, scheme: str, upstream_port: int, pki):
        self.scheme, self.upstream, self.pki = scheme, upstream_port, pki
        self.port = 0
        self.sent: dict[int, str] = {}  # packet id -> topic of the device's QoS 1 PUBLISH
        self.acked: list[str] = []  # topics the broker acknowledged, in order
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> "Front":
        ready = threading.Event()

        def run():
            self._loop = asyncio.new_event_loop()
            self.port = self._loop.run_until_complete(self._serve())
            ready.set()
            self._loop.run_forever()

        threading.Thread(target=run, daemon=True, name="front").start()
        assert ready.wait(10)
        return self

    async def _serve(self) -> int:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.pki.cert_pem, self.pki.key_pem)
        if self.scheme == "mqtts":
            self._server = await asyncio.start_server(self._tls, "127.0.0.1", 0, ssl=ctx)
        else:
            from websockets.asyncio.server import serve

            self._server = await serve(self._ws, "127.0.0.1", 0, ssl=ctx, subprotocols=["mqtt"],  # type: ignore[list-item]
                                       compression=None)
        return self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if not self._loop:
            return

        async def shutdown():
            self._server.close()
            await asyncio.wait_for(self._server.wait_closed(), 5)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)

    def _note_publish(self, first: int, body: bytes) -> None:
        if (first >> 1) & 3:  # QoS 1: the packet id follows the topic
            n = int.from_bytes(body[:2], "big")
            with self._lock:
                self.sent[int.from_bytes(body[2 + n:4 + n], "big")] = body[2:2 + n].decode()

    def _note_puback(self, body: bytes) -> None:
        with self._lock:
            topic = self.sent.get(int.from_bytes(body[:2], "big"))
            if topic is not None:
                self.acked.append(topic)

    async def _pump_up(self, reader, up_w) -> None:
        while True:
            first, packet, body = await bp.read_packet(reader)
            if first >> 4 == bp.PUBLISH:
                self._note_publish(first, body)
            up_w.write(packet)
            await up_w.drain()

    async def _pump_down(self, up_r, send) -> None:
        while True:
            first, packet, body = await bp.read_packet(up_r)
            if first >> 4 == PUBACK:
                self._note_puback(body)
            await send(packet)

    async def _tls(self, reader, writer) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream)

        async def send(packet):
            writer.write(packet)
            await writer.drain()

        await self._run(self._pump_up(reader, up_w), self._pump_down(up_r, send), writer, up_w)

    async def _ws(self, ws) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream)
        frames = asyncio.StreamReader()

        async def feed():
            from websockets.exceptions import ConnectionClosed

            try:
                async for msg in ws:
                    frames.feed_data(msg if isinstance(msg, bytes) else msg.encode())
            except ConnectionClosed:
                pass
            frames.feed_eof()

        await self._run(asyncio.gather(feed(), self._pump_up(frames, up_w)),
                        self._pump_down(up_r, ws.send), None, up_w)
        await ws.close()

    @staticmethod
    async def _run(up, down, writer, up_w) -> None:
        tasks = [asyncio.ensure_future(up), asyncio.ensure_future(down)]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.exception()  # a connection closed: the end of this one, not a failure
        finally:
            for t in tasks:
                t.cancel()
            for w in (writer, up_w):
                if w is not None:
                    w.close()

    def wait_acked(self, topic_re: str, console, timeout: float = 60) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                hit = [t for t in self.acked if re.fullmatch(topic_re, t)]
            if hit:
                return hit[0]
            time.sleep(0.1)
        raise AssertionError(f"no reading on {topic_re} acknowledged; console:\n{console()}")


def readme_example(kind: str) -> str:
    for where, text in examples():
        if where.startswith("README.md") and f'kind = "{kind}"' in re.sub(r"\s+=\s+", " = ", text):
            return text
    raise AssertionError(f"README.md has no {kind} example")


def provisioned(tmp_path: Path, text: str) -> tuple[str, dict, Env]:
    """(device name, its config.json, env) as `uplink provision` renders the example."""
    e = env_for(tmp_path / "fleet", text)
    name = re.search(r"^\[devices\.([^.\]]+)", text, re.M).group(1)  # type: ignore[union-attr]
    r = e.run_process("provision", name)
    assert r.code == 0, r.output
    return name, json.loads((e.build / "devices" / name / "config.json").read_text()), e


def at_front(config: dict, front: Front) -> dict:
    """The broker address overridden, nothing else: same scheme and path, our port."""
    url = config["platform"]["url"]
    m = re.match(r"^(\w+)://[^/]+(/.*)?$", url)
    assert m and m.group(1) == front.scheme, url
    config["platform"]["url"] = f"{m.group(1)}://localhost:{front.port}{m.group(2) or ''}"
    assert config["platform"].get("ca") == "ca.der", "the example's TLS URL got no CA from provision"
    return config


@pytest.fixture
def rig(broker, tmp_path):
    made = []

    class Rig:
        def proxy(self, profile):
            p = bp.ProfileProxy(profile, broker.ports["mqtt"]).start()
            made.append(p)
            return p

        def front(self, scheme, proxy):
            f = Front(scheme, proxy.port, broker.pki).start()
            made.append(f)
            return f

        def cloud(self):
            c = bp.Cloud(broker.ports["mqtt"])
            made.append(c)
            return c

        def board(self, config, files=None):
            b = HostBoard(tmp_path / "board", config, user_py=bp.E2E_USER,
                          files={"ca.der": broker.pki.ca_der.read_bytes(), **(files or {})}).start()
            made.append(b)
            return b

    yield Rig()
    for m in reversed(made):
        (m.stop if hasattr(m, "stop") else m.close)()


def test_thingsboard_readme_example_on_the_host_board(rig, tmp_path):
    text = readme_example("thingsboard")
    name, config, _ = provisioned(tmp_path, text)
    token = secret_values(text)[re.search(r'token\s*=\s*"secret:(\w+)"', text).group(1)]  # type: ignore[union-attr]
    proxy = rig.proxy(bp.ThingsBoard({token: "device"}))
    front = rig.front("mqtts", proxy)
    board = rig.board(at_front(config, front))
    front.wait_acked("v1/devices/me/telemetry", board.console)
    assert proxy.violations == [] and proxy.accepted()[0][0] == token
    assert token not in board.console()


def test_blynk_readme_example_on_the_host_board(rig, tmp_path):
    text = readme_example("blynk")
    name, config, _ = provisioned(tmp_path, text)
    token = next(iter(secret_values(text).values()))
    template = re.search(r'template_id\s*=\s*"(\w+)"', text).group(1)  # type: ignore[union-attr]
    proxy = rig.proxy(bp.Blynk({token}, template_id=template))
    front = rig.front("mqtts", proxy)  # the example's default URL, mqtts://blynk.cloud:8883
    board = rig.board(at_front(config, front))
    front.wait_acked("ds/.+|batch_ds", board.console)
    assert proxy.violations == [] and proxy.accepted()[0][0] == "device"
    assert token not in board.console()


def test_biotz_readme_example_on_the_host_board(rig, tmp_path):
    text = readme_example("biotz")
    name, config, _ = provisioned(tmp_path, text)
    p = config["platform"]
    proxy = rig.proxy(bp.Biotz(p["customer_id"], {p["device_id"]: p["password"]}))
    front = rig.front("mqtts", proxy)
    board = rig.board(at_front(config, front))
    front.wait_acked(re.escape(f"biotz/1/0/{p['customer_id']}/{p['device_id']}/publish/data/")
                     + re.escape(p.get("message_type", "telemetry")), board.console)
    assert proxy.violations == [] and proxy.accepted()[0][0] == p["device_id"]
    assert p["password"] not in board.console()


class _Valid:
    """The Weightron profile's token set: whatever the loopback provider currently honours."""

    def __init__(self, provider):
        self.provider = provider

    def __contains__(self, token) -> bool:
        return self.provider.token_valid(token)


def test_weightron_readme_example_on_the_host_board(rig, tmp_path):
    from host_tools import relay_keys
    from tests.oidc_provider import OIDCService

    text = readme_example("weightron")
    assert "publish" not in re.sub(r"#.*", "", text)  # as written it watches: nothing to acknowledge
    name, config, _ = provisioned(tmp_path, text)
    p = config["platform"]
    app = p["application_id"]
    svc = OIDCService().start()
    try:
        proxy = rig.proxy(bp.Weightron(app, write=False))
        proxy.profile.tokens = _Valid(svc.provider)  # type: ignore[attr-defined]
        front = rig.front("wss", proxy)
        cloud = rig.cloud()
        # the relay: the test's, in front of the loopback provider (the example's is a LAN host)
        # (with the key, its id: the relay checks the id the board signs with)
        p["credentials"].update(url=svc.url, device_id="wt-1", key=svc.keys["wt-1"],
                                key_id=relay_keys.key_id(svc.keys["wt-1"]))
        board = rig.board(at_front(config, front), files={"relay_ca.der": svc.pki.ca_der.read_bytes()})
        board.wait_for_line("mqtt: connected", timeout=60)
        watched = p["watch"][0]
        doc = {"$timestamp": "2026-01-01T12:00:00Z", "$native": {"weight": 3120}}
        for _ in range(100):  # until the subscription is in place at the broker
            cloud.send(f"{app}/{watched}", doc)
            if bp.handled(board, "watch"):
                break
            time.sleep(0.2)
        got = json.loads(bp.handled(board, "watch")[0].split(" ", 2)[2].rsplit(" ", 1)[0])
        assert got == {"topic": watched, "value": doc}
        assert proxy.violations == [] and proxy.accepted()[0][0] == app
        assert svc.keys["wt-1"] not in board.console()
    finally:
        svc.stop()
