"""The Celery application factory."""

from __future__ import annotations

import threading

from celery import Celery, signals

from core.job_runners import JobContext
from core.models.registry import ModelRegistry
from core.storage import Storage
from core.sweeps import most_parallel_trials
from infra.celery_config import RUN_JOB_TASK, celery_config
from infra.job_store import JobStore
from infra.settings import WorkerSettings
from infra.sweeps import SweepHost
from schemas.jobs import artifact_url
from worker import tasks
from worker.metrics import WorkerMetrics


def create_celery(settings: WorkerSettings, metrics: WorkerMetrics | None = None) -> Celery:
    app = Celery("gazer")
    app.conf.update(celery_config(settings.redis_url, settings.visibility_timeout))
    storage = Storage(settings.data_dir, settings.min_free_disk_bytes)
    registry = ModelRegistry(storage, settings.max_loaded_models, onnx_fp16=settings.onnx_fp16,
                             bfloat16=settings.cuda_bfloat16)
    context = JobContext(storage, registry, settings.max_image_pixels, artifact_url)
    store = JobStore.from_url(settings.redis_url, settings.job_lease_seconds)

    def send(job_id: str) -> None:
        app.send_task(RUN_JOB_TASK, args=[job_id])

    stopping = threading.Event()
    sweeps = SweepHost(store, send, settings.redis_url,
                       most_parallel=most_parallel_trials(settings.max_active_jobs_per_client), stopping=stopping)
    worker = tasks.Worker(store, context, metrics or WorkerMetrics(), sweeps, send, settings.max_job_seconds, stopping)
    signals.worker_shutting_down.connect(lambda **_: worker.stopping.set(), weak=False)

    @app.task(name=RUN_JOB_TASK)
    def run_job(job_id: str) -> str:
        return tasks.run_job(job_id, worker)

    return app
