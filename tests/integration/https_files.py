"""An HTTPS file server playing Blynk.Air's package download (docs.blynk.io, Blynk MQTT API
"OTA"): GET of one file, the `x-sha256` response header (base64 of the file's SHA256), Range
requests answered 206 with Content-Range (or ignored: `ranges=False`, a 200 with the whole
file, as a server without Range support answers). `cut_after` cuts the first responses in
the middle of the body (the socket closed with an RST), as a dropped link does."""

from __future__ import annotations

import base64
import hashlib
import http.server
import re
import socket
import ssl
import struct
import threading

from tests.certs import Pki


class FileServer:
    def __init__(self, pki: Pki, data: bytes, *, cuts: int = 0, ranges: bool = True, sha256: bytes | None = None):
        self.data = data
        self.sha = base64.b64encode(sha256 or hashlib.sha256(data).digest()).decode()
        self.cuts = cuts
        self.ranges = ranges
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.bytes_out = 0
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                if not self.path.startswith("/static/"):  # an expired or wrong link
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                rng = self.headers.get("Range")
                with server.lock:
                    server.requests.append((self.path, rng))
                    cut = server.cuts > 0
                    server.cuts -= 1 if cut else 0
                start = 0
                m = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if m and server.ranges:
                    start = int(m.group(1))
                body = server.data[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(server.data) - 1}/{len(server.data)}")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("x-sha256", server.sha)
                self.send_header("Connection", "close")
                self.end_headers()
                if cut:
                    body = body[: len(body) // 3]
                self.wfile.write(body)
                self.wfile.flush()
                with server.lock:
                    server.bytes_out += len(body)
                if cut:  # RST, not FIN: what a dropped link looks like
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki.cert_pem, pki.key_pem)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.url = f"https://localhost:{self.port}/static/bundle.uplb?token=t0k3n"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
