"""host_tools: the CPython side of Uplink, behind the `uplink` command (see docs/host_tools.md)."""

__version__ = "0.1.0"
