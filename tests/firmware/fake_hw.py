# Stand-ins for the ESP32 port's `machine` and `esp32` modules, to exercise the esp32 board
# backend on the unix port. install() puts them in sys.modules; they record what was done.
import sys

import fake_network


class Reset(Exception):
    pass


class _Machine:
    PWRON_RESET = 1
    HARD_RESET = 2
    WDT_RESET = 3
    DEEPSLEEP_RESET = 4
    SOFT_RESET = 5

    def __init__(self):
        self.cause = 1
        self.pins = {}
        self.rtc = None
        self.wdts = []

    def unique_id(self):
        return b"\x24\x0a\xc4\x12\xab\xcd"

    def reset(self):
        raise Reset()

    def reset_cause(self):
        return self.cause


class _Pin:
    OUT = 3
    IN = 1

    def __init__(self, n, mode=-1):
        self.n = n
        machine.pins.setdefault(n, None)

    def value(self, v=None):
        if v is None:
            return machine.pins[self.n]
        machine.pins[self.n] = int(v)


class _RTC:
    def datetime(self, t=None):
        if t is None:
            return machine.rtc
        machine.rtc = t


class _WDT:
    def __init__(self, id=0, timeout=5000):
        self.timeout = timeout
        self.fed = 0
        machine.wdts.append(self)

    def feed(self):
        self.fed += 1


def _wdt(id=0, timeout=5000):
    # one per chip (ports/esp32/machine_wdt.c): WDT() again gives it a new timeout
    if machine.wdts:
        machine.wdts[0].timeout = timeout
        return machine.wdts[0]
    return _WDT(id, timeout)


class _Esp32:
    def __init__(self):
        self.raw = 122  # Fahrenheit, like the original ESP32's sensor

    def raw_temperature(self):
        return self.raw

    HEAP_DATA = 4  # ports/esp32/modesp32.c: MALLOC_CAP_8BIT

    def idf_heap_info(self, cap):
        # modesp32.c esp32_idf_heap_info: per matching region (total, free, largest free
        # block, minimum free ever); numbers as in the ESP32 docs' example
        assert cap == self.HEAP_DATA
        return [(240, 0, 0, 0), (7288, 0, 0, 0), (16648, 4, 4, 4), (79912, 35712, 35512, 35108)]


machine = _Machine()
machine.Pin = _Pin
machine.RTC = _RTC
machine.WDT = _wdt
esp32 = _Esp32()


def install():
    sys.modules["machine"] = machine
    sys.modules["esp32"] = esp32
    fake_network.install()
