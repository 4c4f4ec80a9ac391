"""Worker settings, read from GAZER_* environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from core.jobs import LONGEST_JOB_SECONDS


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GAZER_")

    data_dir: Path = Path("var")
    redis_url: str  # required: `make run` and docker-compose pass the one the API uses
    job_lease_seconds: float = 60.0
    visibility_timeout: float = LONGEST_JOB_SECONDS
