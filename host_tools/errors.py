"""What `uplink` exits with: the one table of exit codes, and the error type that carries one.

Every error a person can act on is an UplinkError (FleetError, SecretError, BoardError, ...,
each in its own module) whose class names its exit code. The `uplink` command catches it in
one place (cli.py) and prints its lines. `uplink --help` and docs/host_tools.md show the
table rendered from ExitCode (tests/host/test_cli.py checks both). Scripts rely on the
numbers: never change one.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    meaning: str

    def __new__(cls, code: int, meaning: str):
        member = int.__new__(cls, code)
        member._value_ = code
        member.meaning = meaning
        return member

    OK = 0, "ok"
    FAIL = 1, "failure"
    USAGE = 2, "bad usage"
    FLEET = 3, "invalid fleet file (or unknown device or board)"
    SECRET = 4, "a secret is missing"
    BOARD = 5, "board or port problem"
    BUILD = 6, "build failure (mpy-cross)"
    CLOUD = 7, "cloud provisioning or token refused or unreachable"


class UplinkError(Exception):
    """A problem a person can act on; the message says what to do."""

    code = ExitCode.FAIL

    def lines(self) -> list[str]:
        """What is printed, one `error:` line each."""
        return [str(self)]


class UsageError(UplinkError):
    """A command asked for what it cannot do (the arguments parse, the request does not)."""

    code = ExitCode.USAGE


def help_text() -> str:
    """The epilog of `uplink --help`."""
    return "Exit codes: " + ", ".join(f"{c.value} {c.meaning}" for c in ExitCode) + "."


def markdown() -> str:
    """The table in docs/host_tools.md."""
    rows = [f"| {c.value} | {c.meaning} |" for c in ExitCode]
    return "\n".join(["| exit code | meaning |", "|---|---|", *rows])
