import os
from pathlib import Path

import pytest

from tests.services import Mosquitto, mosquitto_bin

INTEGRATION = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items):
    # the end-to-end scenarios are the long ones: out of `make test-fast` (-m "not slow")
    for item in items:
        if INTEGRATION in item.path.parents:
            item.add_marker(pytest.mark.slow)


# Under pytest-xdist a worker's own terminal is nobody's: what tests.ledger.show prints past
# the capture (each chaos scenario's ledger) travels with the test's report instead, and the
# controller prints it at the end of the run.
_item: list = [None]


def pytest_configure(config):
    if hasattr(config, "workerinput"):
        # a worker starts with COLUMNS=80 where the run had none, and rich (the CLI's output)
        # would then fix its tables at 80 columns for good: the run's own environment wins
        for k, v in config.workerinput["terminal_env"].items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

        from tests import ledger

        def show(capsys, text: str) -> None:
            _item[0].user_properties.append(("shown", text))

        ledger.show = show  # before the test modules import it


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):  # (pytest-xdist, in the controller: what each worker is given)
    node.workerinput["terminal_env"] = {k: os.environ.get(k) for k in ("COLUMNS", "LINES")}


def pytest_runtest_setup(item):
    _item[0] = item


@pytest.hookimpl(tryfirst=True)  # before mpy_plugin's note, which stays the last line
def pytest_terminal_summary(terminalreporter):
    shown = [text for rep in terminalreporter.getreports("passed") + terminalreporter.getreports("failed")
             for name, text in getattr(rep, "user_properties", ()) if name == "shown"]
    if shown:
        terminalreporter.section("ledgers")
        for text in dict.fromkeys(shown):
            terminalreporter.write_line(text)


def pytest_sessionstart(session):
    # Build the host board's firmware once, before pytest-xdist starts its workers: each
    # HostBoard would otherwise compile into the same build/host-mpy at once, and one board
    # could load a .mpy another worker is still writing.
    if hasattr(session.config, "workerinput") or not getattr(session.config.option, "numprocesses", None):
        return
    from host_tools import hostboard

    try:
        hostboard.compile_firmware(hostboard.ROOT / "build" / "host-mpy")
    except Exception:
        pass  # firmware that does not compile: the tests that boot it say so, one by one


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
