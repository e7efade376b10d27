"""Real services the tests run on loopback: mosquitto with plain, TLS, WS and WSS listeners.

`Mosquitto` is used by the pytest fixture `broker` (tests/conftest.py) and by firmware tests
that say `NEEDS = ("broker",)`: those get the broker's addresses in environment variables.
"""

from __future__ import annotations

import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from host_tools import child
from tests.certs import make_pki


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port for a test server to listen on, below the kernel's ephemeral range: every outgoing
    connection takes its source port from that range, so a port picked there can be a client's
    (a relay flood holds thousands) by the time the server binds it. Mosquitto's websockets
    listeners then failed to start five times in a row in one full run."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randint(max(1024, low - 12000), low - 1)
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))  # no SO_REUSEADDR: any socket on the port refuses it
                return port
            except OSError:
                continue
    with socket.socket() as s:  # a crowded range: what the kernel gives
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > end:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


def mosquitto_bin() -> str | None:
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
    )


class _PortTaken(Exception):
    pass



def _listening(pid: int, ports: set[int]) -> set[int]:
    """Those of `ports` on which process `pid` holds a listening TCP socket (Linux /proc)."""
    mine = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                mine.add(link[8:-1])
    except OSError:
        return set()
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            port = int(f[1].rsplit(":", 1)[1], 16)
            if f[3] == "0A" and port in ports and f[9] in mine:  # 0A: LISTEN
                found.add(port)
    return found

class Mosquitto:
    """A mosquitto process with four listeners; ports stay fixed across restarts."""

    def __init__(self, workdir: Path | None = None, *, passwords: dict | None = None, acl: str | None = None,
                 persistence: bool = False, client_certs: bool = False):
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="uplink-broker-"))
        self.pki = make_pki(self.dir / "pki")
        self.wrong_pki = make_pki(self.dir / "wrong-pki", ca_name="Some Other CA")
        # client_certs: a fifth listener, "mqtts_cert", that requires a client certificate
        # signed by the test CA (the certificate's CN is the username)
        self.ports = {k: free_port() for k in ("mqtt", "mqtts", "ws", "wss") + (("mqtts_cert",) if client_certs
                                                                                else ())}
        self.passwords = passwords
        self.acl = acl
        # with persistence, sessions and queued QoS 1 messages survive a stop() + start()
        self.persistence = persistence
        self.proc: subprocess.Popen | None = None
        self._started = False
        self.log = self.dir / "mosquitto.log"

    # -- configuration -------------------------------------------------------------------
    def _write_passwords(self) -> None:
        path = self.dir / "passwd"
        path.write_text("".join(f"{u}:{p}\n" for u, p in (self.passwords or {}).items()))
        path.chmod(0o600)
        subprocess.run(["mosquitto_passwd", "-U", str(path)], check=True, capture_output=True)

    def set_passwords(self, passwords: dict) -> None:
        """Replace the password file and make the running broker reload it (SIGHUP)."""
        self.passwords = passwords
        self._write_passwords()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)
            time.sleep(0.2)

    def _write_conf(self) -> Path:
        p = self.pki
        tls = f"cafile {p.ca_pem}\ncertfile {p.cert_pem}\nkeyfile {p.key_pem}\n"
        lines = [
            # as root mosquitto would switch to user "mosquitto", who cannot read our temp dir
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            "per_listener_settings false",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.dir}/",
            "log_type error\nlog_type warning\nlog_type notice",
            f"log_dest file {self.log}",
            "max_inflight_messages 0",
            "max_queued_messages 100000",
        ]
        if self.passwords is not None:
            self._write_passwords()
            lines += ["allow_anonymous false", f"password_file {self.dir / 'passwd'}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl is not None:
            (self.dir / "acl").write_text(self.acl)
            lines.append(f"acl_file {self.dir / 'acl'}")
        lines += [
            f"listener {self.ports['mqtt']} 127.0.0.1",
            f"listener {self.ports['mqtts']} 127.0.0.1\n{tls}",
            f"listener {self.ports['ws']}\nprotocol websockets\nsocket_domain ipv4",
            f"listener {self.ports['wss']}\nprotocol websockets\nsocket_domain ipv4\n{tls}",
        ]
        if "mqtts_cert" in self.ports:
            lines.append(f"listener {self.ports['mqtts_cert']} 127.0.0.1\n{tls}require_certificate true\n"
                         "use_identity_as_username true")
        conf = self.dir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> "Mosquitto":
        exe = mosquitto_bin()
        if exe is None:
            raise RuntimeError("mosquitto is not installed: run `make setup` as root or apt-get install mosquitto")
        for _ in range(5):
            try:
                return self._start(exe)
            except _PortTaken:
                # free_port() only found a free port a moment ago: another process may have
                # taken it since. A first start picks new ones; a restart must keep its ports
                # (clients reconnect to them), so it waits for them to come free instead.
                if self._started:
                    time.sleep(0.5)
                else:
                    self.ports = {k: free_port() for k in self.ports}
        raise RuntimeError(f"mosquitto did not start: {self._log_text()}")

    def _log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def _port_taken(self) -> bool:
        # plain listeners say "Address already in use"; the websockets ones (libwebsockets)
        # only "Unable to create websockets listener on port N"
        log = self._log_text()
        return "Address already in use" in log or "Unable to create websockets listener" in log

    def _start(self, exe: str) -> "Mosquitto":
        conf = self._write_conf()
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        end = time.monotonic() + 10
        waiting = set(self.ports.values())
        while waiting:
            if self.proc.poll() is not None:
                if self._port_taken():
                    raise _PortTaken()
                raise RuntimeError(f"mosquitto exited: {self._log_text()}")
            if time.monotonic() > end:
                self.stop()
                raise RuntimeError(f"mosquitto did not start: {self._log_text()}")
            # a port counts once mosquitto itself listens on it: one that answers may be another
            # process's, which makes mosquitto exit a moment later (under load, after any sleep)
            waiting -= _listening(self.proc.pid, waiting)
            if waiting:
                time.sleep(0.02)
        self._started = True
        return self

    def kill(self) -> None:
        """SIGKILL: what a crashed or power-cut broker looks like to clients."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        child.stop(self.proc)

    def restart(self) -> None:
        self.kill()
        self.start()

    def url(self, scheme: str = "mqtt") -> str:
        port = self.ports[{"mqtt": "mqtt", "mqtts": "mqtts", "ws": "ws", "wss": "wss"}[scheme]]
        path = "/mqtt" if scheme in ("ws", "wss") else ""
        return f"{scheme}://localhost:{port}{path}"

    def env(self) -> dict:
        return {
            "BROKER_HOST": "localhost",
            "BROKER_MQTT_PORT": str(self.ports["mqtt"]),
            "BROKER_MQTTS_PORT": str(self.ports["mqtts"]),
            "BROKER_WS_PORT": str(self.ports["ws"]),
            "BROKER_WSS_PORT": str(self.ports["wss"]),
            "BROKER_CA_DER": str(self.pki.ca_der),
            "BROKER_WRONG_CA_DER": str(self.wrong_pki.ca_der),
        }


_SERVICES: dict = {}


def get(name: str, config=None):
    """A session-wide service for firmware tests, started on first use."""
    if name not in _SERVICES:
        if name == "broker":
            svc = Mosquitto().start()
        elif name == "oidc":  # OIDC provider + token relay + Biotz-like ingestion
            from tests.oidc_provider import OIDCService

            svc = OIDCService().start()
        elif name == "ntp":  # SNTP servers on loopback: NTP_HOST, NTP_PORT, NTP_OFFSET_MS, ...
            from tests.ntp_server import NtpService

            svc = NtpService().start()
        else:
            raise KeyError(f"unknown service {name!r} in NEEDS (known: broker, oidc, ntp)")
        _SERVICES[name] = svc
        if config is not None:
            config.add_cleanup(svc.stop)
    return _SERVICES[name]
