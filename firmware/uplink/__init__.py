# Uplink firmware: gets an ESP32's readings to an IoT cloud and keeps them until acknowledged.
VERSION = "0.1.0"


class ConfigError(Exception):
    """A config the firmware cannot work with: the app stops in safe mode with the reason.
    Defined here, not in uplink.config, because runner.py unloads uplink.config after boot to
    free its heap; a module imported later (tb_provision, credentials) that imported it
    again got a second ConfigError class, which runner.run's `except ConfigError` missed."""


class transient:
    """Modules imported from here on leave sys.modules (and with them the heap) at end():
    on an ESP32 every imported module's bytecode lives in RAM. `with transient():` for a
    block; t = transient() ... t.end() for work that outlives one (an updater). Only what a
    block imports first goes: a module loaded before it stays loaded."""

    def __init__(self):
        import sys

        self.had = list(sys.modules)

    def end(self):
        import gc
        import sys

        had = self.had
        for name in list(sys.modules):
            if name in had or not name.startswith("uplink."):
                continue
            del sys.modules[name]
            pkg, _, leaf = name.rpartition(".")
            parent = sys.modules.get(pkg)
            if parent is not None and leaf in parent.__dict__:
                delattr(parent, leaf)  # `from uplink import x` would find it there
        gc.collect()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.end()
