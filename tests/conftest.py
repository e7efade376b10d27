import os

import pytest

from tests.services import Mosquitto, mosquitto_bin


@pytest.fixture
def broker(tmp_path):
    """A fresh mosquitto on free loopback ports: mqtt, mqtts, ws, wss (see tests/services.py)."""
    if mosquitto_bin() is None:
        pytest.skip("mosquitto is not installed (make setup installs it when run as root)")
    b = Mosquitto(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture
def umask000():
    """The most permissive umask a user can have: files the tool writes must still be private."""
    old = os.umask(0)
    yield
    os.umask(old)
