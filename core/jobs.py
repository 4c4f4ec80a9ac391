"""What a job body gets: `progress(fraction, **details)` and `should_stop()`; and how it says
that it stopped because it was asked to."""

from __future__ import annotations

from typing import Callable

Progress = Callable[..., None]
ShouldStop = Callable[[], bool]


class JobCancelled(Exception):
    """Raised inside a job body when its should_stop() said yes."""


class JobPruned(Exception):
    """Raised inside a sweep's trial when its sweep's pruner says it will not catch up."""


STATES = ("queued", "running", "succeeded", "failed", "cancelled", "pruned")
TERMINAL = ("succeeded", "failed", "cancelled", "pruned")
