"""Fixtures the relay and token tests share: one loopback OIDC provider and one relay PKI per
test module (a module that needs a fresh provider per test defines its own), and a Redis of
its own per test (skipped without redis-server)."""

import pytest

from host_tools import hostboard, relay_pki
from tests.oidc_provider import OIDCProvider
from tests.relay_services import Redis, need_redis


@pytest.fixture(scope="module")
def provider():
    p = OIDCProvider(lifetime=300).start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return relay_pki.ensure_relay_pki(tmp_path_factory.mktemp("relay"), ["localhost", "127.0.0.1"])


@pytest.fixture
def redis(tmp_path):
    need_redis()
    r = Redis(tmp_path / "redis").start()
    yield r
    r.stop()


@pytest.fixture
def model():
    """The ESP32 model's binary (ROMFS, a frozen image's stand-in need its MicroPython)."""
    exe = hostboard.esp32_model()
    if not exe:
        pytest.skip(f"no ESP32 model: {hostboard.esp32_model_missing()}")
    return exe
