# Uplink firmware: gets an ESP32's readings to an IoT cloud and keeps them until acknowledged.
VERSION = "0.1.0"


class ConfigError(Exception):
    """A config the firmware cannot work with: the app stops in safe mode with the reason.
    Defined here, not in uplink.config, because app.py unloads uplink.config after boot to
    free its heap; a module imported later (tb_provision, credentials) that imported it
    again got a second ConfigError class, which app.run's `except ConfigError` missed."""
