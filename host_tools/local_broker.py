"""An MQTT broker on this machine for `uplink sim` and `make demo`: mosquitto when installed,
else amqtt (a broker in Python, a dependency of uplink) in this process. It lives as long as
the command that started it."""

from __future__ import annotations

import asyncio
import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from host_tools.child import die_with_parent
from host_tools.errors import UplinkError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class BrokerError(UplinkError):
    """The local broker did not start."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), 0.5).close()
        return True
    except OSError:
        return False


def local_address(url: str) -> tuple[str, int] | None:
    """(host, port) of a plain-MQTT url on this machine, the kind of broker `uplink sim` may
    start; None for anything else (TLS, WebSocket, another host)."""
    u = urlsplit(url)
    if u.scheme != "mqtt" or u.hostname not in LOOPBACK:
        return None
    return ("127.0.0.1" if u.hostname == "localhost" else u.hostname), u.port or 1883


def _mosquitto() -> str | None:
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)


class LocalBroker:
    """mosquitto if installed, else amqtt in a background thread; anonymous, on loopback."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.kind = ""
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "LocalBroker":
        exe = _mosquitto()
        if exe:
            self.kind = "mosquitto"
            conf = Path(tempfile.mkdtemp(prefix="uplink-broker-")) / "mosquitto.conf"
            # as root mosquitto would switch to its own user, and a change of user clears the
            # parent-death signal (prctl(2)): it stays the user who ran uplink
            conf.write_text(f"listener {self.port} {self.host}\nallow_anonymous true\npersistence false\n"
                            f"user {getpass.getuser()}\n")
            self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, preexec_fn=die_with_parent())
        else:
            self.kind = "amqtt"
            self._thread = threading.Thread(target=self._amqtt, daemon=True)
            self._thread.start()
        self._wait()
        return self

    def _wait(self, timeout: float = 10) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if listening(self.host, self.port):
                return
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise BrokerError(f"the local {self.kind} broker did not start listening on {self.host}:{self.port}: "
                          f"start one there yourself (mosquitto -p {self.port}), or point the device's "
                          "platform.url at a broker that runs")

    def _amqtt(self) -> None:
        import logging

        from amqtt.broker import Broker

        logging.getLogger("amqtt").setLevel(logging.CRITICAL)  # its per-client chatter is not the user's
        cfg = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

        async def serve() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            broker = Broker(cfg)
            await broker.start()
            await self._stop.wait()
            await broker.shutdown()

        asyncio.run(serve())

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait()
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
