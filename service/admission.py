"""A bounded queue per model: requests in flight for one model version beyond the limit are
answered 503 with Retry-After at once, before their images are read or decoded, so that the
latency of admitted requests stays bounded under overload."""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from typing import Iterator

from core.errors import ServiceBusy

RETRY_AFTER_SECONDS = 1


class ModelQueues:
    """Counts requests per model; used on the event loop only, so it needs no lock."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight: Counter[str] = Counter()

    @contextmanager
    def admitted(self, model: str) -> Iterator[None]:
        if self.in_flight[model] >= self.limit:
            raise ServiceBusy(f"model {model!r} has {self.limit} requests in flight (GAZER_MAX_QUEUED_PER_MODEL); "
                              f"retry shortly", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        self.in_flight[model] += 1
        try:
            yield
        finally:
            self.in_flight[model] -= 1
            if not self.in_flight[model]:
                del self.in_flight[model]
