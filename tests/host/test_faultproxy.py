import socket
import threading
import time

import pytest

from tests.faultproxy import FaultProxy


@pytest.fixture
def echo_server():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=lambda c=c: _echo(c), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield srv.getsockname()[1]
    srv.close()


def _echo(c):
    with c:
        try:
            while data := c.recv(4096):
                c.sendall(data)
        except OSError:  # the proxy's cut resets the connection: that ends the echo, as EOF does
            pass


def _connect(proxy):
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
    return s


def test_forwards_then_cuts(echo_server):
    p = FaultProxy(echo_server)
    try:
        s = _connect(p)
        s.sendall(b"hello")
        assert s.recv(100) == b"hello"
        p.cut_all()
        with pytest.raises(OSError):
            for _ in range(50):  # the reset shows up on the next read or write
                s.sendall(b"x")
                if s.recv(100) == b"":
                    raise ConnectionResetError
                time.sleep(0.02)
        assert p.cuts >= 1
    finally:
        p.close()


def test_cut_mid_chunk_delivers_a_strict_prefix(echo_server):
    p = FaultProxy(echo_server, seed=7)
    try:
        s = _connect(p)
        p.cut_mid_chunk()
        s.sendall(b"0123456789" * 10)
        got = b""
        try:
            while chunk := s.recv(1000):
                got += chunk
        except OSError:
            pass
        assert 0 < len(got) < 100 or got == b""
        assert b"0123456789" * 10 != got
    finally:
        p.close()


def test_stall_holds_traffic_until_released(echo_server):
    p = FaultProxy(echo_server)
    try:
        s = _connect(p)
        p.stall()
        time.sleep(0.1)
        s.sendall(b"ping")
        s.settimeout(0.3)
        with pytest.raises(socket.timeout):
            s.recv(10)
        p.stall(False)
        s.settimeout(2)
        assert s.recv(10) == b"ping"
    finally:
        p.close()


def test_refuse_closes_new_connections(echo_server):
    p = FaultProxy(echo_server)
    try:
        p.refuse()
        s = _connect(p)
        s.settimeout(2)
        assert s.recv(10) == b""
    finally:
        p.close()
