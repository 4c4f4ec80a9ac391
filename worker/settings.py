"""Worker settings, read from GAZER_* environment variables."""

from __future__ import annotations

from pydantic import Field

from infra.settings import SharedSettings


class WorkerSettings(SharedSettings):
    redis_url: str  # required: `make run` and docker-compose pass the one the API uses
    worker_metrics_port: int | None = Field(None, ge=1, le=65535)  # serve Prometheus metrics on this port
    # and on this address: loopback unless told (the metrics have no key; docker-compose's
    # Prometheus reaches the worker's container on its network, so it says 0.0.0.0)
    worker_metrics_host: str = Field("127.0.0.1", min_length=1, max_length=255)
    # A job (a sweep counting its own waiting, each trial its own run) that has run this long
    # stops at its next step and fails with `job-time-limit`.
    max_job_seconds: float = Field(24 * 3600.0, gt=0)
