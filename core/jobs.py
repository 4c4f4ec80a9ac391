"""What a job body gets: `progress(fraction, **details)` and `should_stop()`; and how it says
that it stopped because it was asked to."""

from __future__ import annotations

from typing import Callable

Progress = Callable[..., None]
ShouldStop = Callable[[], bool]


def share_of(progress: Progress, low: float, high: float) -> Progress:
    """`progress` for one part of a job: its fractions 0..1 mapped onto low..high."""
    def report(fraction: float, **details: object) -> None:
        progress(low + fraction * (high - low), **details)
    return report


class JobCancelled(Exception):
    """Raised inside a job body when its should_stop() said yes."""


class JobPruned(Exception):
    """Raised inside a sweep's trial when its sweep's pruner says it will not catch up."""


STATES = ("queued", "running", "succeeded", "failed", "cancelled", "pruned")
TERMINAL = ("succeeded", "failed", "cancelled", "pruned")
