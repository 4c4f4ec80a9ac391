"""Worker settings, read from GAZER_* environment variables."""

from __future__ import annotations

from infra.settings import SharedSettings


class WorkerSettings(SharedSettings):
    redis_url: str  # required: `make run` and docker-compose pass the one the API uses
    worker_metrics_port: int | None = None  # serve Prometheus metrics on this port
