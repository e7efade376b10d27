"""A real SNTP server on loopback for the firmware's clock tests (RFC 4330 server side).

`NtpServer(offset_s=..., behaviour=...)` answers every request from a thread:

- "ok": a proper stratum-2 reply whose time is the real time plus `offset_s`;
- "silent": never answers (a server behind a firewall);
- "garbage": answers with random bytes;
- "kod": a kiss-o'-death (stratum 0, "RATE");
- "unsynced": leap indicator 3 (alarm), stratum 16;
- "old": a well-formed reply that says 1999 (a server that lost its clock);
- "wrong_nonce": a well-formed reply that does not echo the request's transmit timestamp.

`NtpService` runs one of each for `NEEDS = ("ntp",)` firmware tests; see env().
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time

NTP_DELTA = 2208988800
BEHAVIOURS = ("ok", "silent", "garbage", "kod", "unsynced", "old", "wrong_nonce")


def ntp_stamp(unix_s: float) -> bytes:
    s = int(unix_s)
    frac = int((unix_s - s) * 2**32) & 0xFFFFFFFF
    return struct.pack(">II", (s + NTP_DELTA) & 0xFFFFFFFF, frac)


class NtpServer:
    def __init__(self, offset_s: float = 0.0, behaviour: str = "ok", host: str = "127.0.0.1"):
        assert behaviour in BEHAVIOURS, behaviour
        self.offset_s = offset_s
        self.behaviour = behaviour
        self.requests = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.host, self.port = self.sock.getsockname()
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> "NtpServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop = True
        self.sock.close()

    def reply(self, req: bytes) -> bytes | None:
        b = self.behaviour
        if b == "silent":
            return None
        if b == "garbage":
            return os.urandom(48)
        now = time.time() + self.offset_s
        if b == "old":
            now = 915148800.0 + 3600  # 1999-01-01
        version = (req[0] >> 3) & 7 or 4
        leap, stratum = (3, 16) if b == "unsynced" else (0, 2)
        refid = b"RATE" if b == "kod" else b"GPS\0"
        if b == "kod":
            stratum = 0
        origin = os.urandom(8) if b == "wrong_nonce" else req[40:48]
        head = struct.pack(">BBbbII", (leap << 6) | (version << 3) | 4, stratum, 6, -20, 0, 0) + refid
        return head + ntp_stamp(now - 10) + origin + ntp_stamp(now) + ntp_stamp(now)

    def _serve(self) -> None:
        while not self._stop:
            try:
                req, addr = self.sock.recvfrom(512)
            except OSError:
                return
            self.requests += 1
            if len(req) < 48:
                continue
            out = self.reply(req)
            if out is not None:
                try:
                    self.sock.sendto(out, addr)
                except OSError:
                    return


class NtpService:
    """One server per behaviour, for firmware tests. The "ok" server's clock runs
    OFFSET_S ahead of real time so a test can tell its time from the PC's."""

    OFFSET_S = 3 * 86400 + 0.25

    def __init__(self):
        self.servers = {
            b: NtpServer(self.OFFSET_S if b == "ok" else 0.0, b) for b in BEHAVIOURS
        }

    def start(self) -> "NtpService":
        for s in self.servers.values():
            s.start()
        return self

    def stop(self) -> None:
        for s in self.servers.values():
            s.stop()

    def env(self) -> dict:
        env = {
            "NTP_HOST": "127.0.0.1",
            "NTP_PORT": str(self.servers["ok"].port),
            "NTP_OFFSET_MS": str(int(self.OFFSET_S * 1000)),
        }
        for b, s in self.servers.items():
            env[f"NTP_{b.upper()}_PORT"] = str(s.port)
        return env
