"""Job metrics read from Redis at scrape time: jobs by type and state over the newest `limit`
job records, and the queue depth. (Job durations are the workers' own histogram: one rebuilt
here from the records kept would lose counts as records expire, which Prometheus reads as a
counter's reset.) A reading serves every scrape for `max_age`
seconds, and concurrent scrapes wait for one reading, so that however often /metrics is asked,
Redis is read at most that many records a second."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Callable, Iterator

import redis
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from infra.celery_config import QUEUE
from infra.job_store import JobStore

log = logging.getLogger(__name__)

# kombu's Redis transport keeps priorities 3, 6 and 9 in lists of their own beside QUEUE.
_QUEUE_KEYS = (QUEUE, *(f"{QUEUE}\x06\x16{priority}" for priority in (3, 6, 9)))


def queue_depth(client: redis.Redis) -> int:
    """Celery messages waiting for a worker (not those a worker holds)."""
    with client.pipeline(transaction=False) as reads:
        for key in _QUEUE_KEYS:
            reads.llen(key)
        return sum(reads.execute())


class JobsCollector(Collector):
    """`store` returns the job store, or None before the app has one (then only the families,
    without samples, are given)."""

    def __init__(self, store: Callable[[], JobStore | None], limit: int = 10_000, max_age: float = 1.0) -> None:
        self.store = store
        self.limit = limit
        self.max_age = max_age
        self._lock = threading.Lock()
        self._reading: tuple[float, tuple[Metric, ...]] | None = None  # (when, families) of the last read

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("gazer_jobs", f"Jobs by type and state (among the newest {self.limit})",
                              labels=["type", "state"]),
            GaugeMetricFamily("gazer_job_records", "Job records kept in Redis"),
            GaugeMetricFamily("gazer_queue_depth", "Job messages waiting in the Celery queue for a worker"),
        )

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if self._reading is not None and time.monotonic() - self._reading[0] < self.max_age:
                return iter(self._reading[1])
            started = time.monotonic()
            families = self._read()
            if families is None:
                return iter(self._families())
            self._reading = started, families
            return iter(families)

    def _read(self) -> tuple[Metric, ...] | None:
        """The families with their samples; None without a store or when Redis fails."""
        jobs, records, depth = families = self._families()
        store = self.store()
        if store is None:
            return None
        try:
            rows = store.summaries(self.limit)
            records.add_metric([], store.count())
            depth.add_metric([], queue_depth(store.redis))
        except redis.RedisError as error:
            log.warning("job metrics not read from Redis: %s", error)
            return None
        for (job_type, state), count in sorted(Counter((r["type"], r["state"]) for r in rows).items()):
            jobs.add_metric([job_type, state], count)
        return families
