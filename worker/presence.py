"""The worker says it is alive in Redis every quarter lease, so that `/readyz` (and sweeps) can
count live workers; a worker that dies drops out once the lease passes."""

from __future__ import annotations

import logging
import os
import socket
import threading

import redis

from infra.job_store import JobStore

log = logging.getLogger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Presence:
    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.name = worker_name()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="gazer-presence", daemon=True)

    def _beat(self) -> None:
        while True:
            try:
                self.store.worker_alive(self.name)
            except redis.RedisError as error:
                log.warning("could not tell Redis this worker is alive (%s); trying again", error)
            if self._stop.wait(self.store.lease_seconds / 4):
                return

    def __enter__(self) -> "Presence":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.store.worker_gone(self.name)
        except redis.RedisError:
            pass
