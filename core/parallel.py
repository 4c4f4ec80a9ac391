"""CPU work (decoding, resizing, PNG deflating) spread over the cores on one shared thread pool.

Pillow, numpy and ISA-L release the GIL in their heavy loops, so threads run them in
parallel. The pool starts on first use, and sharing it keeps concurrent requests from
starting threads of their own.
"""

from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence, TypeVar

from threadpoolctl import ThreadpoolController, threadpool_limits

Item = TypeVar("Item")
Result = TypeVar("Result")

_in_pool = threading.local()
_pool_lock = threading.Lock()
_pools: dict[str, ThreadPoolExecutor] = {}


def cpu_count() -> int:
    """The cores this process may run on (affinity and cpusets count, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _mark_pool_thread() -> None:
    _in_pool.value = True


def _executor(name: str, initializer: Callable[[], None] | None = None) -> ThreadPoolExecutor:
    """A pool of a thread per core, named `name`, started on first use."""
    with _pool_lock:
        if name not in _pools:
            _pools[name] = ThreadPoolExecutor(max_workers=cpu_count(), thread_name_prefix=name,
                                              initializer=initializer)
        return _pools[name]


def _pool() -> ThreadPoolExecutor:
    return _executor("gazer-cpu", _mark_pool_thread)


def _spreading() -> ThreadPoolExecutor:
    return _executor("gazer-spread")


def single_threaded_blas() -> None:
    """numpy's BLAS (it resizes heatmaps) on one thread from now on in this process: work is
    spread over this module's pool, and OpenBLAS's own threads spin on a core for a while after
    each product they share."""
    threadpool_limits(1, user_api="blas")


@functools.cache
def _openmp() -> ThreadpoolController:
    """The OpenMP runtimes loaded now (torch's), found once: finding them reads every loaded library."""
    return ThreadpoolController().select(user_api="openmp")


@contextmanager
def torch_on_this_thread() -> Iterator[None]:
    """torch's CPU ops of the calling thread run on it alone while inside, for small tensors after
    an ONNX Runtime run, where waking torch's threads costs more than they save. OpenMP's thread
    count is each thread's own, so other threads keep theirs; torch.set_num_threads would also
    change the count that threads starting meanwhile take for good."""
    import torch  # here, not at import: the pool's other users (decoding, PNGs) need no torch

    torch.get_num_threads()  # torch sets a thread's count when it first works there: before the limit
    with _openmp().limit(limits=1):
        yield


def workers() -> int:
    """How many items parallel_map would run at once from here: 1 inside the pool itself,
    where waiting on the pool could deadlock it."""
    return 1 if getattr(_in_pool, "value", False) else cpu_count()


def submit(function: Callable[[], Result], spread: bool = False) -> Future:
    """`function` on the shared pool: work that should not wait behind more threads than cores
    (decoding a request's images while the model runs another batch). With `spread`, for work of
    several items: `function` runs on a thread of a second pool, which only waits, so that its
    parallel_map calls spread the items over the shared pool (inside it they would run one by one)."""
    return (_spreading() if spread else _pool()).submit(function)


def parallel_map(function: Callable[[Item], Result], items: Sequence[Item]) -> list[Result]:
    """`function` over `items` in order; inline when there is one item or one worker."""
    if len(items) < 2 or workers() < 2:
        return [function(item) for item in items]
    return list(_pool().map(function, items))
