"""CPU work (decoding, resizing, PNG deflating) spread over the cores on one shared thread pool.

Pillow, numpy and ISA-L release the GIL in their heavy loops, so threads run them in
parallel. The pool starts on first use, and sharing it keeps concurrent requests from
starting threads of their own.
"""

from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

_in_pool = threading.local()


def _mark_pool_thread() -> None:
    _in_pool.value = True


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="gazer-cpu",
                              initializer=_mark_pool_thread)


def workers() -> int:
    """How many items parallel_map would run at once from here: 1 inside the pool itself,
    where waiting on the pool could deadlock it."""
    return 1 if getattr(_in_pool, "value", False) else os.cpu_count() or 1


def parallel_map(function: Callable[[Item], Result], items: Sequence[Item]) -> list[Result]:
    """`function` over `items` in order; inline when there is one item or one worker."""
    if len(items) < 2 or workers() < 2:
        return [function(item) for item in items]
    return list(_pool().map(function, items))
