"""The batcher: what waits is run together, per key and up to max_batch; abandoned work is
dropped; one bad payload fails only its own request; long work pauses for short work."""

from __future__ import annotations

import threading

import pytest

from core import cancellation
from core.batching import Batcher, pause_point


class Recorder:
    """Runs batches of numbers (doubling them), recording each call; the first call can be held."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, list[int]]] = []
        self.hold = threading.Event()
        self.holding = threading.Event()
        self.hold.set()

    def __call__(self, key, payloads):
        self.calls.append((key, list(payloads)))
        if not self.hold.is_set():
            self.holding.set()
            assert self.hold.wait(30)
        if "bad" in payloads:
            raise ValueError("bad payload")
        return [payload * 2 for payload in payloads]


def held_batcher(max_batch: int = 8) -> tuple[Batcher, Recorder]:
    """A batcher whose first run (key "first") is held until the recorder's `hold` is set."""
    recorder = Recorder()
    batcher = Batcher("test", recorder, max_batch)
    recorder.hold.clear()
    first = batcher.submit("first", 0, 1)
    assert recorder.holding.wait(30)
    recorder.first = first
    return batcher, recorder


def test_an_idle_batcher_runs_at_once_and_alone():
    recorder = Recorder()
    batcher = Batcher("test", recorder, max_batch=8)
    assert batcher("a", 21, 1) == 42
    assert recorder.calls == [("a", [21])]


def test_what_waits_runs_together_per_key_up_to_max_batch():
    batcher, recorder = held_batcher(max_batch=4)
    futures = [batcher.submit("a", 1, 2), batcher.submit("b", 2, 1), batcher.submit("a", 3, 2),
               batcher.submit("a", 4, 1)]
    recorder.hold.set()
    assert [future.result(30) for future in futures] == [2, 4, 6, 8]
    assert recorder.calls[1:] == [("a", [1, 3]), ("b", [2]), ("a", [4])]  # 2 + 2 images fill a batch of 4


def test_with_two_runners_work_that_waits_runs_beside_a_running_batch_and_no_third_starts():
    recorder = Recorder()
    batcher = Batcher("test", recorder, max_batch=8, runners=2)
    both_running = threading.Barrier(3, timeout=30)

    def run(key, payloads):
        if key != "c":
            both_running.wait()  # a and b run at once, or this times out
        return recorder(key, payloads)

    batcher._run = run
    first, second = batcher.submit("a", 1, 1), batcher.submit("b", 2, 1)
    third = batcher.submit("c", 3, 1)  # both runners are busy: it waits
    assert len(batcher._threads) == 2
    both_running.wait()
    assert [first.result(30), second.result(30), third.result(30)] == [2, 4, 6]
    assert sorted(key for key, _ in recorder.calls) == ["a", "b", "c"]


def test_abandoned_work_is_dropped_before_it_runs():
    batcher, recorder = held_batcher()
    gone = threading.Event()
    abandoned = batcher.submit("a", 1, 1, gone)
    kept = batcher.submit("a", 2, 1)
    gone.set()
    recorder.hold.set()
    assert kept.result(30) == 4
    with pytest.raises(cancellation.ClientGone):
        abandoned.result(30)
    assert recorder.calls[1:] == [("a", [2])]


def test_a_bad_payload_fails_only_its_own_request():
    batcher, recorder = held_batcher()
    good, bad = batcher.submit("a", 1, 1), batcher.submit("a", "bad", 1)
    recorder.hold.set()
    assert good.result(30) == 2
    with pytest.raises(ValueError):
        bad.result(30)
    assert recorder.calls[1:] == [("a", [1, "bad"]), ("a", [1]), ("a", ["bad"])]


def test_a_batch_stops_once_all_its_clients_have_gone():
    gone = threading.Event()
    checked = threading.Event()

    def run(key, payloads):
        gone.set()
        cancellation.check()  # as a model forward does
        checked.set()
        return payloads

    with pytest.raises(cancellation.ClientGone):
        Batcher("test", run, 8).submit("a", 1, 1, gone).result(30)
    assert not checked.is_set()


def test_long_work_pauses_for_short_work():
    """A short request that arrives while a long one runs finishes before the long one does."""
    order: list[str] = []
    long_started, short_submitted = threading.Event(), threading.Event()

    def run(key, payloads):
        if key == "long":
            long_started.set()
            for chunk in range(3):
                assert short_submitted.wait(30)
                pause_point()
                order.append(f"long chunk {chunk}")
        else:
            order.append("short")
        return payloads

    batcher = Batcher("test", run, 8, is_long=lambda key: key == "long")
    long = batcher.submit("long", 1, 1)
    assert long_started.wait(30)
    short = batcher.submit("short", 2, 1)
    short_submitted.set()
    assert short.result(30) == 2 and long.result(30) == 1
    assert order == ["short", "long chunk 0", "long chunk 1", "long chunk 2"]


def test_a_batcher_whose_only_waiting_work_was_abandoned_keeps_serving():
    recorder = Recorder()
    batcher = Batcher("test", recorder, max_batch=8)
    assert batcher("a", 1, 1) == 2
    gone = threading.Event()
    gone.set()
    with pytest.raises(cancellation.ClientGone):
        batcher.submit("a", 2, 1, gone).result(30)
    assert batcher.submit("a", 3, 1).result(30) == 6


def test_a_request_cancelled_while_it_waits_does_not_stop_the_batcher():
    batcher, recorder = held_batcher()
    gone = threading.Event()
    cancelled = batcher.submit("a", 1, 1, gone)
    assert cancelled.cancel()  # as asyncio.wrap_future does when the awaiting task is cancelled
    gone.set()
    recorder.hold.set()
    assert batcher.submit("a", 2, 1).result(30) == 4
