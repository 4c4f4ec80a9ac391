"""Settings that the API and the worker share, read from GAZER_* environment variables: where
data lives, Redis, job leases and the limits on what a client's files may cost."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.datasets import ArchiveLimits
from infra.celery_config import LONGEST_JOB_SECONDS


def physical_memory() -> int:
    """This machine's memory: the default guess for a worker's (set it where workers differ)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class SharedSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GAZER_")

    data_dir: Path = Path("var")
    # The API starts an embedded redis-server without one; the worker needs the API's.
    redis_url: str | None = None
    job_lease_seconds: float = 60.0
    visibility_timeout: float = LONGEST_JOB_SECONDS
    max_image_pixels: int = 40_000_000
    max_dataset_bytes: int = 500 * 1024 * 1024
    max_dataset_uncompressed_bytes: int = 2 * 1024**3
    max_dataset_files: int = 20_000
    max_dataset_ingest_seconds: float = Field(600.0, gt=0)
    max_model_bytes: int = 1024**3          # an uploaded model (weights or ONNX file)
    max_loaded_models: int = Field(8, ge=1)  # beyond this, the least recently used is unloaded
    # For the API's and the worker's models. On a GPU, built-in models predict from a float16 ONNX
    # export (agreeing with torch within core.models.onnx_export.FP16_AGREEMENT_TOLERANCE); ignored on the CPU.
    onnx_fp16: bool = False
    # On a GPU, the gradient CAM methods (Grad-CAM and its kin) run in bfloat16 autocast; ignored on
    # the CPU. Off by default: slower for EfficientNet-Lite0 on an H200 (README, Measured on a lent GPU).
    cuda_bfloat16: bool = False
    # Jobs one client (key, or address when open) may have queued or running, over all API
    # processes (a sweep counts once, its trials not); beyond it 429. A sweep runs at most one
    # fewer trials at once (the worker reads it for a sweep that names no `parallel`).
    max_active_jobs_per_client: int = Field(16, ge=1)
    # What one job may need; jobs estimated above it are refused before they are queued.
    worker_memory_bytes: int = Field(default_factory=lambda: int(0.8 * physical_memory()), ge=1)

    @property
    def archive_limits(self) -> ArchiveLimits:
        return ArchiveLimits(max_files=self.max_dataset_files, max_total_bytes=self.max_dataset_uncompressed_bytes,
                             max_image_pixels=self.max_image_pixels, max_seconds=self.max_dataset_ingest_seconds)
