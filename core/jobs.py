"""What a job body gets: `progress(fraction, **details)` and `should_stop()`; and how it says
that it stopped because it was asked to."""

from __future__ import annotations

import math
from typing import Any, Callable

Progress = Callable[..., None]
ShouldStop = Callable[[], bool]


def share_of(progress: Progress, low: float, high: float) -> Progress:
    """`progress` for one part of a job: its fractions 0..1 mapped onto low..high."""
    def report(fraction: float, **details: object) -> None:
        progress(low + fraction * (high - low), **details)
    return report


def finite(value: Any) -> Any:
    """`value` with every NaN or infinite float (a diverged loss, say) made None: JSON has no
    such numbers, and a browser's JSON.parse refuses Python's NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


class JobCancelled(Exception):
    """Raised inside a job body when its should_stop() said yes."""


class JobPruned(Exception):
    """Raised inside a sweep's trial when its sweep's pruner says it will not catch up."""


STATES = ("queued", "running", "succeeded", "failed", "cancelled", "pruned")
TERMINAL = ("succeeded", "failed", "cancelled", "pruned")
