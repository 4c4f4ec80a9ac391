"""Settings that the API and the worker share, read from GAZER_* environment variables: where
data lives, Redis, job leases and the limits on what a client's files may cost; and the worker's own."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Self

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from core.datasets import ArchiveLimits
from infra.celery_config import LONGEST_JOB_SECONDS

# What the API, the worker and `make run` exit with where they cannot start as configured (a line
# on stderr says why): `make run` does not start such a child again.
EXIT_REFUSED = 2


def physical_memory() -> int:
    """This machine's memory: the default guess for a worker's (set it where workers differ)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class SharedSettings(BaseSettings):
    # no `inf` or `nan` in any number: `inf` seconds passed every check, then crashed both processes
    model_config = SettingsConfigDict(env_prefix="GAZER_", allow_inf_nan=False)

    data_dir: Path = Path("var")

    @field_validator("data_dir", mode="before")
    @classmethod
    def _not_empty(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():  # else Path("") is the working folder, unsaid
            raise ValueError("must name a folder (unset, it is var)")
        return value

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        """A relative folder is taken from the working folder at start: an upload's check runs in a
        folder of its own, where the relative `var` of `make run` named nothing (every ONNX upload
        was a 500)."""
        return value.absolute()

    # Uploads, data sets and jobs that would leave less free space than this where data_dir is
    # are refused (507), and a worker fails a job that would start below it: the room left is
    # for what already runs (Redis's saves, running jobs' results).
    min_free_disk_bytes: int = Field(1024**3, ge=0)
    # The API starts an embedded redis-server without one; the worker needs the API's.
    redis_url: str | None = None
    job_lease_seconds: float = Field(60.0, gt=0)
    visibility_timeout: float = Field(LONGEST_JOB_SECONDS, gt=0)
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_dataset_bytes: int = Field(500 * 1024 * 1024, ge=1)
    max_dataset_uncompressed_bytes: int = Field(2 * 1024**3, ge=1)
    max_dataset_files: int = Field(20_000, ge=1)
    max_dataset_ingest_seconds: float = Field(600.0, gt=0)
    # Class folders in a data set, and so classes in a fine-tune (ImageNet's 1000): a fine-tune's
    # confusion matrix, held in memory and written out, grows with the square (10,000 classes: 600 MB).
    max_classes: int = Field(ArchiveLimits.max_classes, ge=2)
    max_model_bytes: int = Field(1024**3, ge=1)  # an uploaded model (weights or ONNX file)
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

    @classmethod
    def from_environment(cls) -> Self:
        """The settings, or, where a GAZER_ variable is wrong, exit 2 with a line for each."""
        try:
            return cls()
        except SettingsError as unparsed:  # a list or a mapping that is not JSON
            field = re.search(r'field "(\w+)"', str(unparsed))
            name = f"GAZER_{field.group(1).upper()}" if field else "a GAZER_ variable"
            given = os.environ.get(name)
            print(f"{name}{'' if given is None else '=' + given}: must be JSON (a list as [\"a\", \"b\"])",
                  file=sys.stderr)
            sys.exit(EXIT_REFUSED)
        except ValidationError as invalid:
            for error in invalid.errors():
                name = "GAZER_" + "_".join(str(part) for part in error["loc"]).upper()
                given = os.environ.get(name)
                why = "must be set" if error["type"] == "missing" else error["msg"].removeprefix("Value error, ")
                print(f"{name}{'' if given is None else '=' + given}: {why}", file=sys.stderr)
            sys.exit(EXIT_REFUSED)

    @property
    def archive_limits(self) -> ArchiveLimits:
        return ArchiveLimits(max_files=self.max_dataset_files, max_total_bytes=self.max_dataset_uncompressed_bytes,
                             max_image_pixels=self.max_image_pixels, max_seconds=self.max_dataset_ingest_seconds,
                             max_classes=self.max_classes)


class WorkerSettings(SharedSettings):
    """The worker's (here, beside the shared ones, so that the API can tell a worker's variable
    from a misspelled one: `make run` gives both one environment)."""

    redis_url: str  # required: `make run` and docker-compose pass the one the API uses
    worker_metrics_port: int | None = Field(None, ge=1, le=65535)  # serve Prometheus metrics on this port
    # and on this address: loopback unless told (the metrics have no key; docker-compose's
    # Prometheus reaches the worker's container on its network, so it says 0.0.0.0)
    worker_metrics_host: str = Field("127.0.0.1", min_length=1, max_length=255)
    # A job (a sweep counting its own waiting, each trial its own run) that has run this long
    # stops at its next step and fails with `job-time-limit`.
    max_job_seconds: float = Field(24 * 3600.0, gt=0)
