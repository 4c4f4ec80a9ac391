"""Work from concurrent requests for one model, coalesced into batches on a thread of its own.

A `Batcher` takes items (a key and a payload of some images); its thread takes the oldest
waiting item together with every later one of the same key, up to `max_batch` images, and
runs them as one call. An idle batcher adds no delay: it runs what is waiting now, unless
`wait_seconds` asks it to wait for more. Items whose client has gone are dropped before they
run, and a running batch stops (at its next `cancellation.check`) once all its clients have gone.

With `runners` > 1, up to that many batches run at once, each on a thread of its own, when
work is waiting while a batch runs (ONNX Runtime on a CPU: see OnnxPredictor.concurrent_runs).

Long work (integrated gradients, SmoothGrad, Score-CAM) pauses between its chunks at
`pause_point()`: there the batcher's thread runs one waiting batch of short work, so a slow
request does not hold the model for everyone.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterator, Sequence

from core import cancellation

# (key, payloads) -> one result per payload, in order
RunBatch = Callable[[Hashable, list[Any]], Sequence[Any]]

_local = threading.local()
IDLE_SECONDS = 60.0


@dataclass(frozen=True)
class Batching:
    """How a model's batchers coalesce: at most `max_batch` images per run, and how long an
    idle batcher waits for more before it runs what it has (0: it does not wait)."""

    max_batch: int = 32
    wait_seconds: float = 0.0
    # told (kind, images) of every run: for metrics
    observe: Callable[[str, int], None] | None = None


@dataclass
class _Item:
    key: Hashable
    payload: Any
    size: int
    future: Future
    gone: threading.Event | None

    def abandoned(self) -> bool:
        return self.gone is not None and self.gone.is_set()


class _AllGone:
    """Set once every client of a batch has gone (items without a client never go)."""

    def __init__(self, items: list[_Item]) -> None:
        self.events = [item.gone for item in items]

    def is_set(self) -> bool:
        return all(event is not None and event.is_set() for event in self.events)


class Batcher:
    def __init__(self, name: str, run: RunBatch, max_batch: int, wait_seconds: float = 0.0,
                 is_long: Callable[[Hashable], bool] = lambda key: False,
                 observe: Callable[[int], None] | None = None, runners: int = 1) -> None:
        self.name = name
        self.runners = runners
        self._observe = observe
        self._run = run
        self.max_batch = max_batch
        self.wait_seconds = wait_seconds
        self._is_long = is_long
        self._queue: deque[_Item] = deque()
        self._changed = threading.Condition()
        self._threads: set[threading.Thread] = set()
        self._idle = 0  # threads waiting for work
        self._long_running = 0  # long batches running now (more than one on more than one runner)

    def submit(self, key: Hashable, payload: Any, size: int, gone: threading.Event | None = None) -> Future:
        """A future of the payload's result. `gone`: the client's event (default: the one
        `cancellation.for_client` set for this thread)."""
        item = _Item(key, payload, size, Future(), gone if gone is not None else cancellation.current())
        with self._changed:
            self._queue.append(item)
            self._start_runner_if_needed()
            self._changed.notify()
        return item.future

    def _start_runner_if_needed(self) -> None:
        """A thread for waiting work when none is free to take it (holding `_changed`)."""
        if self._queue and self._idle == 0 and len(self._threads) < self.runners:
            thread = threading.Thread(target=self._serve, name=f"batch-{self.name}", daemon=True)
            self._threads.add(thread)
            thread.start()

    def __call__(self, key: Hashable, payload: Any, size: int) -> Any:
        """Submit and wait: for callers on a plain thread."""
        if getattr(_local, "batcher", None) is self:  # our own thread (a nested call): run it here
            return self._run(key, [payload])[0]
        return self.submit(key, payload, size).result()

    def running_long(self) -> bool:
        """Whether long work is running now (and pausing for short work)."""
        return self._long_running > 0

    def waiting(self) -> int:
        """Images waiting to run."""
        with self._changed:
            return sum(item.size for item in self._queue)

    def _serve(self) -> None:
        _local.batcher = self
        try:
            while (batch := self._next_batch(block=True)) is not None:
                self._execute(batch)
        finally:
            with self._changed:  # an unexpected error must not leave a dead thread registered
                self._threads.discard(threading.current_thread())
                self._start_runner_if_needed()  # whatever came meanwhile gets a thread of its own

    def _next_batch(self, block: bool, short_only: bool = False) -> list[_Item] | None:
        """The next batch to run (blocking: waiting for one); None when there is none (blocking:
        when the thread should end, idle for IDLE_SECONDS, so that a model that was unloaded
        leaves no thread behind; the next submit starts one)."""
        with self._changed:
            while True:
                if block and not self._queue:
                    self._idle += 1
                    try:
                        self._changed.wait_for(lambda: self._queue, timeout=IDLE_SECONDS)
                    finally:
                        self._idle -= 1
                    if not self._queue:
                        self._threads.discard(threading.current_thread())
                        return None
                if block and self.wait_seconds > 0:
                    deadline = time.monotonic() + self.wait_seconds
                    while (sum(item.size for item in self._queue) < self.max_batch
                           and (left := deadline - time.monotonic()) > 0):
                        self._changed.wait(left)
                batch = self._take(short_only)
                if block and self._queue:  # what is left is for another runner: a free one, or a new one
                    self._start_runner_if_needed()
                    self._changed.notify()
                if batch is not None or not block:  # blocking, and all that waited was dropped: wait on
                    return batch

    def _take(self, short_only: bool) -> list[_Item] | None:
        """The oldest runnable item and the later ones of its key that fit; drops abandoned ones."""
        for item in [item for item in self._queue if item.abandoned() or item.future.cancelled()]:
            self._queue.remove(item)
            if item.future.set_running_or_notify_cancel():
                item.future.set_exception(cancellation.ClientGone("the client closed the connection; its work "
                                                                  "was dropped before it ran"))
        first = next((item for item in self._queue if not (short_only and self._is_long(item.key))), None)
        if first is None:
            return None
        batch, size = [], 0
        for item in list(self._queue):
            if item.key == first.key and (not batch or size + item.size <= self.max_batch):
                batch.append(item)
                size += item.size
                self._queue.remove(item)
        return batch

    def _execute(self, batch: list[_Item]) -> None:
        running = [item for item in batch if item.future.set_running_or_notify_cancel()]
        if running:
            self._run_items(running)

    def _run_items(self, running: list[_Item]) -> None:
        try:
            if self._observe is not None:
                self._observe(sum(item.size for item in running))
            with cancellation.for_client(_AllGone(running)), self._pausing(running[0].key):  # type: ignore[arg-type]
                results = list(self._run(running[0].key, [item.payload for item in running]))
            if len(results) != len(running):
                raise RuntimeError(f"{self.name}: {len(results)} results for {len(running)} payloads")
        except Exception as error:
            if len(running) > 1 and not isinstance(error, cancellation.ClientGone):
                for item in running:  # alone, so that an error lands on the request that caused it
                    self._run_items([item])
                return
            for item in running:
                item.future.set_exception(error)
            return
        for item, result in zip(running, results):
            item.future.set_result(result)

    @contextmanager
    def _pausing(self, key: Hashable) -> Iterator[None]:
        """While long work runs, its pause points run waiting short batches."""
        previous = getattr(_local, "pause", None)
        long = self._is_long(key)
        _local.pause = self._run_one_short if long else None
        if long:
            with self._changed:
                self._long_running += 1
        try:
            yield
        finally:
            _local.pause = previous
            if long:
                with self._changed:
                    self._long_running -= 1

    def _run_one_short(self) -> None:
        batch = self._next_batch(block=False, short_only=True)
        if batch:
            self._execute(batch)


def pause_point() -> None:
    """Between chunks of long work: lets the model's batcher run a waiting short batch."""
    pause = getattr(_local, "pause", None)
    if pause is not None:
        pause()
