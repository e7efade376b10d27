"""Finding the board's serial port: one board is used, several are offered to pick from (at a
terminal), a script is told to pass --port; `flash-micropython` finds it as `deploy` does."""

from __future__ import annotations

import pytest

from host_tools import ports
from tests.host import fake_ports
from tests.host.terminal import Terminal
from tests.host.test_build_flash import esp_image
from tests.host.uplink_helpers import REPO, Env

DEVKIT = {"device": "/dev/ttyUSB0", "vid": 0x10C4, "pid": 0xEA60, "serial_number": "0001",
          "product": "CP2102 USB to UART Bridge Controller"}
S3 = {"device": "/dev/ttyACM0", "vid": 0x303A, "pid": 0x1001, "serial_number": "F4:12:FA:00:11:22",
      "product": "USB JTAG/serial debug unit"}
MOUSE = {"device": "/dev/ttyS0", "product": None, "description": "ttyS0"}


@pytest.fixture
def port_list(tmp_path, monkeypatch):
    """The machine's serial ports, as the test writes them (in-process and in a terminal)."""
    path = tmp_path / "ports.json"
    monkeypatch.setenv("UPLINK_TEST_PORTS", str(path))
    monkeypatch.setattr(ports, "comports", fake_ports.comports)
    return path


def test_flash_finds_the_one_board_and_a_script_is_told_to_choose(tmp_path, port_list):
    img = esp_image(tmp_path / "fw.bin", 0)
    env = Env(tmp_path)
    args = ["flash-micropython", "--image", str(img), "--board", "esp32-devkitc", "--dry-run"]
    fake_ports.write(port_list, [MOUSE, DEVKIT])
    r = env.run(*args, env={"UPLINK_TEST_PORTS": str(port_list)})
    assert r.code == 0, r.output
    assert "--port /dev/ttyUSB0 " in r.stdout
    fake_ports.write(port_list, [MOUSE, DEVKIT, S3])
    r = env.run(*args, env={"UPLINK_TEST_PORTS": str(port_list)})
    assert r.code == 5 and r.stdout == ""
    assert r.stderr == "error: several boards are plugged in (/dev/ttyACM0, /dev/ttyUSB0): pass --port\n"
    fake_ports.write(port_list, [MOUSE])
    r = env.run(*args, env={"UPLINK_TEST_PORTS": str(port_list)})
    assert r.code == 5 and "no board found on USB" in r.stderr


@pytest.mark.timeout(120)
def test_several_boards_at_a_terminal_the_person_picks_one(tmp_path, port_list):
    img = esp_image(tmp_path / "fw.bin", 0)
    fake_ports.write(port_list, [DEVKIT, S3, MOUSE])
    env = Env(tmp_path / "fleet")
    term = Terminal(tmp_path / "term")
    try:
        term.start(["flash-micropython", "--image", str(img), "--board", "esp32-devkitc", "--dry-run"],
                   {**env.env, "UPLINK_TEST_PORTS": str(port_list), "PYTHONPATH": str(REPO)}, env.root,
                   module="tests.host.fake_ports")
        assert term.wait_for_output("which one? [1-2]", 60), term.screen()
        screen = term.screen()
        assert "1  /dev/ttyACM0  USB JTAG/serial debug unit  303a:1001  serial F4:12:FA:00:11:22" in screen
        assert "2  /dev/ttyUSB0  CP2102 USB to UART Bridge Controller  10c4:ea60  serial 0001" in screen
        assert "ttyS0" not in screen
        term.keys("2", "Enter")
        assert term.wait(60) == 0, term.screen()
        assert "--chip esp32 --port /dev/ttyUSB0 --baud 460800 write-flash" in term.output()
    finally:
        term.close()

