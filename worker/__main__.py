"""`python -m worker`: one worker process, running one job at a time (run one per GPU, each
with its own CUDA_VISIBLE_DEVICES). CUDA is first touched inside this process, by a job."""

from __future__ import annotations

import logging
import sys

import optuna
from celery import signals

from infra.job_store import JobStore
from infra.logs import configure_logging
from infra.settings import EXIT_REFUSED, WorkerSettings
from core.parallel import single_threaded_blas
from core.runtime.denormals import flush_denormals
from worker.app import create_celery
from worker.metrics import WorkerMetrics
from worker.presence import Presence

log = logging.getLogger("gazer.worker")


def _keep_our_logging(**_: object) -> None:
    """Connected to setup_logging, so Celery leaves the JSON logging as it is."""


def main() -> None:
    configure_logging()
    optuna.logging.disable_default_handler()  # its lines go through the JSON log, not to stderr of their own
    optuna.logging.enable_propagation()
    single_threaded_blas()
    flush_denormals()
    signals.setup_logging.connect(_keep_our_logging, weak=False)
    settings = WorkerSettings.from_environment()
    metrics = WorkerMetrics()
    if settings.worker_metrics_port is not None:
        try:
            metrics.serve(settings.worker_metrics_port, settings.worker_metrics_host)
        except OSError as error:
            print(f"GAZER_WORKER_METRICS_PORT={settings.worker_metrics_port}: cannot serve metrics there, on "
                  f"{settings.worker_metrics_host} ({error.strerror or error})", file=sys.stderr)
            sys.exit(EXIT_REFUSED)
        log.info("worker metrics on %s port %d", settings.worker_metrics_host, settings.worker_metrics_port)
    app = create_celery(settings, metrics)
    with Presence(JobStore.from_url(settings.redis_url, settings.job_lease_seconds)):
        app.worker_main(["--quiet", "worker", "--pool=solo", "--concurrency=1", "--loglevel=INFO",  # no banner
                         "--without-gossip", "--without-mingle", "--without-heartbeat"])


if __name__ == "__main__":
    main()
