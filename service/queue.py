"""The API's side of the job queue: job records in Redis and Celery messages by task name."""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Celery

from core.errors import ServiceBusy, StorageFailed

from infra.celery_config import RUN_JOB_TASK, celery_config
from infra.job_store import JobStore


log = logging.getLogger(__name__)


class QueueUnavailable(ServiceBusy):
    code = "queue-unavailable"


class JobQueue:
    def __init__(self, redis_url: str, lease_seconds: float, visibility_timeout: float) -> None:
        self.store = JobStore.from_url(redis_url, lease_seconds)
        self.celery = Celery("gazer-api")
        self.celery.conf.update(celery_config(redis_url, visibility_timeout))

    def submit(self, job_type: str, params: dict[str, Any], owner: str | None, client: str,
               limit: int) -> dict[str, Any]:
        """The record and its message both exist, or neither does (503); 429 when `client`
        already has `limit` jobs queued or running."""
        try:
            job = self.store.create(job_type, params, owner, client=client, limit=limit)
        except redis.OutOfMemoryError:
            raise StorageFailed("the job store is full (Redis reached its maxmemory); finished jobs must expire "
                                "or be deleted before new ones are taken") from None
        except redis.RedisError as error:
            raise QueueUnavailable(f"the job queue cannot take jobs now: {error}") from None
        try:
            self.celery.send_task(RUN_JOB_TASK, args=[job["id"]])
        except Exception as error:  # kombu's and redis's connection errors alike
            try:
                self.store.discard(job["id"])
            except redis.RedisError:
                log.error("job %s: its message was not sent and its record could not be removed", job["id"])
            raise QueueUnavailable(f"the job queue cannot take jobs now: {error}") from None
        return job

    def close(self) -> None:
        self.celery.close()
        self.store.redis.close()
