"""Celery settings shared by the API (which sends) and the worker (which runs)."""

from __future__ import annotations

from typing import Any

RUN_JOB_TASK = "gazer.run_job"
QUEUE = "celery"  # Celery's default queue: a Redis list of that name
LONGEST_JOB_SECONDS = 7 * 24 * 3600


def celery_config(redis_url: str, visibility_timeout: float = LONGEST_JOB_SECONDS) -> dict[str, Any]:
    """The visibility timeout must outlast the longest job."""
    return {
        "broker_url": redis_url,
        "task_default_queue": QUEUE,
        "task_serializer": "json",
        # Job records in Redis (infra.job_store) hold results; Celery keeps none.
        "task_ignore_result": True,
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # kombu looks for unacknowledged messages past the timeout every 10 s, but scans only one
        # look in 10: a message would wait up to 100 s beyond its timeout (a short one in tests)
        "broker_transport_options": {"visibility_timeout": visibility_timeout,
                                     "unacked_restore_interval": min(10, max(1, round(visibility_timeout))),
                                     "unacked_restore_throttle": 1},
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
    }
