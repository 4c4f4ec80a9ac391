"""What a job body gets: `progress(fraction, **details)` and `should_stop()`; and how it says
that it stopped because it was asked to."""

from __future__ import annotations

from typing import Callable

Progress = Callable[..., None]
ShouldStop = Callable[[], bool]


class JobCancelled(Exception):
    """Raised inside a job body when its should_stop() said yes."""


STATES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = ("succeeded", "failed", "cancelled")
