"""The API's side of the job queue: job records in Redis and Celery messages by task name."""

from __future__ import annotations

from typing import Any

from celery import Celery

from infra.celery_config import RUN_JOB_TASK, celery_config
from infra.job_store import JobStore


class JobQueue:
    def __init__(self, redis_url: str, lease_seconds: float, visibility_timeout: float) -> None:
        self.store = JobStore.from_url(redis_url, lease_seconds)
        self.celery = Celery("gazer-api")
        self.celery.conf.update(celery_config(redis_url, visibility_timeout))

    def submit(self, job_type: str, params: dict[str, Any]) -> dict[str, Any]:
        job = self.store.create(job_type, params)
        self.celery.send_task(RUN_JOB_TASK, args=[job["id"]])
        return job

    def close(self) -> None:
        self.celery.close()
        self.store.redis.close()
