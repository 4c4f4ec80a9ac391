"""The shared CPU pool: a request's several images are worked on at once, also when the request's
work was handed to the pool as one task."""

from __future__ import annotations

import threading

import pytest

from core import parallel

pytestmark = pytest.mark.skipif(parallel.cpu_count() < 2, reason="needs two cores")


def _both_at_once() -> list[str]:
    """Two items that finish only if they run at the same time."""
    barrier = threading.Barrier(2, timeout=5)

    def item(_: int) -> str:
        barrier.wait()
        return threading.current_thread().name

    return parallel.parallel_map(item, [0, 1])


def test_a_spread_task_runs_its_items_on_the_shared_pool_at_once():
    names = parallel.submit(_both_at_once, spread=True).result(timeout=10)
    assert len(set(names)) == 2 and all(name.startswith("gazer-cpu") for name in names)


def test_a_task_on_the_shared_pool_runs_its_items_one_by_one():
    """Inside the pool, waiting on the pool could deadlock it: the items run inline."""
    with pytest.raises(threading.BrokenBarrierError):
        parallel.submit(_both_at_once).result(timeout=10)


def test_torch_on_this_thread_holds_for_the_calling_thread_alone_and_ends_with_the_block():
    import torch

    before = torch.get_num_threads()
    seen = {}

    def other_thread() -> None:
        torch.ones(3).sum()  # its first torch work: it takes its count then
        seen["other"] = torch.get_num_threads()

    with parallel.torch_on_this_thread():
        seen["inside"] = torch.get_num_threads()
        other = threading.Thread(target=other_thread)
        other.start()
        other.join()
    assert seen == {"inside": 1, "other": before} and torch.get_num_threads() == before
