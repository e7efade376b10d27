"""Processes uplink starts end with it: a `preexec_fn` that asks Linux to kill the child when
its parent dies (uplink killed, its terminal closed, `| head` ending it by SIGPIPE), and
stop() for ending one on purpose."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _prctl():
    # looked up here, in the parent: the child between fork and exec only calls it (a thread
    # of the parent, amqtt's broker, may hold the import lock at fork time)
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()


def die_with_parent(parent: int | None = None):
    """A preexec_fn: in the child, SIGKILL when the parent *thread* ends (Linux; elsewhere the
    parent's own cleanup is all there is): start the child from a thread that outlives it."""
    parent = parent or os.getpid()

    def preexec() -> None:
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the line above: go too
            os._exit(1)

    return preexec


def stop(proc: subprocess.Popen | None) -> None:
    """SIGTERM, and SIGKILL after 5 s: a child that will not stop must not hang its parent."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
