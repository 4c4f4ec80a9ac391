"""Child processes: ended with their parent, and stopped politely first, by force when they do not listen."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from typing import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def ended_with_this_process() -> Callable[[], None] | None:
    """A `preexec_fn` for Popen: the child gets SIGTERM when the thread that starts it dies, even by
    SIGKILL, which leaves no chance to stop it otherwise (Linux's PR_SET_PDEATHSIG; None
    elsewhere). Start children from the thread that lives as long as they should."""
    if not sys.platform.startswith("linux"):
        return None
    parent, prctl = os.getpid(), ctypes.CDLL(None, use_errno=True).prctl

    def set_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # it died before the signal was set
            os.kill(os.getpid(), signal.SIGTERM)

    return set_death_signal


def stop_process(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
