"""The one task: run a job by id. Claiming is atomic, so a redelivered message is a no-op."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from core.errors import GazerError
from core.job_runners import RUNNERS, JobContext
from core.jobs import JobCancelled
from infra import logs
from infra.job_store import JobStore
from schemas.problems import problem
from worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)


def _heartbeat(store: JobStore, job_id: str, stop: threading.Event) -> None:
    while not stop.wait(min(5.0, store.lease_seconds / 4)):
        store.heartbeat(job_id)


def run_job(job_id: str, store: JobStore, context: JobContext, metrics: WorkerMetrics) -> str:
    token = logs.job_id.set(job_id)
    try:
        worker = f"{socket.gethostname()}:{os.getpid()}"
        if not store.claim(job_id, worker):
            log.info("job %s is not queued any more (cancelled, running elsewhere or done); skipped", job_id)
            return "skipped"
        job = store.get(job_id)
        started = time.perf_counter()
        with metrics.running.track_inprogress():
            state = _run(job, store, context)
        metrics.record(job["type"], state, time.perf_counter() - started)
        return state
    finally:
        logs.job_id.reset(token)


def _run(job: dict, store: JobStore, context: JobContext) -> str:
    """Runs a claimed job to its end; the state it ended in."""
    job_id = job["id"]
    stop = threading.Event()
    beating = threading.Thread(target=_heartbeat, args=(store, job_id, stop), daemon=True)
    beating.start()
    try:
        result = RUNNERS[job["type"]](
            job_id, job["params"],
            lambda fraction, **details: store.report_progress(job_id, fraction, **details),
            lambda: store.cancel_requested(job_id), context)
    except JobCancelled:
        store.finish(job_id, "cancelled")
        return "cancelled"
    except GazerError as error:
        store.finish(job_id, "failed", error=problem(error.status, error.code, error.detail).model_dump(exclude_none=True))
        return "failed"
    except Exception as error:  # the job fails, the worker lives on
        log.exception("job %s failed", job_id)
        store.finish(job_id, "failed", error=problem(500, "job-crashed", f"the job stopped on an unexpected "
                                                                       f"{type(error).__name__}; see the worker log"
                                                     ).model_dump(exclude_none=True))
        return "failed"
    finally:
        stop.set()
    store.finish(job_id, "succeeded", result=result)
    return "succeeded"
