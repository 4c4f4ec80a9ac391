"""The one task: a job message is a turn to run the queued job whose turn it is (JobStore.claim_next).
Claiming is atomic, so no job runs twice; a message left over runs nothing."""

from __future__ import annotations

import errno
import logging
import shutil
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import redis

from core.errors import GazerError, NotFound, ResultTooLarge
from core.job_runners import FINE_TUNE, RUNNERS, JobContext
from core.jobs import JobCancelled, JobPruned
from core.sweep_trials import run_trial
from core.sweeps import SWEEP
from infra import logs
from infra.job_store import JobStore
from infra.sweeps import SweepHost, run_sweep
from schemas.problems import problem
from worker.metrics import WorkerMetrics
from worker.presence import worker_name

log = logging.getLogger(__name__)
_END_ATTEMPTS = 5


def _heartbeat(store: JobStore, job_id: str, stop: threading.Event) -> None:
    """Beats until stopped; a failed beat (Redis restarting, say) is logged and the next one tried."""
    while not stop.wait(min(5.0, store.lease_seconds / 4)):
        try:
            store.heartbeat(job_id)
        except redis.RedisError as error:
            log.warning("job %s: heartbeat failed (%s); trying again", job_id, error)


def _progress_report(store: JobStore, job_id: str) -> Callable[..., None]:
    """`progress` for the runner; a report that cannot be written (Redis restarting) is skipped."""
    def report(fraction: float, **details: object) -> None:
        try:
            store.report_progress(job_id, fraction, **details)
        except redis.RedisError as error:
            log.warning("job %s: progress not recorded (%s)", job_id, error)

    return report


@dataclass(frozen=True)
class Worker:
    """What the task runs jobs with. `send` sends a job's message; `stopping` is set when the
    worker is told to stop (SIGTERM: a restart, `make run` ending): a running job then stops at
    its next step and goes back to the queue, to run afresh (a sweep picks up from its trials),
    where it would have been lost."""

    store: JobStore
    context: JobContext
    metrics: WorkerMetrics
    sweeps: SweepHost
    send: Callable[[str], None]
    max_seconds: float
    stopping: threading.Event = field(default_factory=threading.Event)


class _StopCheck:
    """`should_stop` for the runner: yes once the job's record says so (cancelled, or reaped as
    lost), once the job has run for `max_seconds`, or once the worker is stopping. While Redis
    cannot be read the job goes on: if the outage outlasts the lease, the next check that gets
    through finds it reaped."""

    def __init__(self, store: JobStore, job_id: str, worker: str, max_seconds: float,
                 stopping: threading.Event) -> None:
        self.store, self.job_id, self.worker = store, job_id, worker
        self.max_seconds = max_seconds
        self.deadline = time.monotonic() + max_seconds
        self.stopping = stopping
        self.out_of_time = self.interrupted = False

    def __call__(self) -> bool:
        if self.stopping.is_set():  # first: a sweep's coordinator then keeps its trials for the next run
            self.interrupted = True
            return True
        if time.monotonic() > self.deadline:
            self.out_of_time = True
            return True
        try:
            return self.store.should_stop(self.job_id, self.worker)
        except redis.RedisError as error:
            log.warning("job %s: could not read the job record (%s); going on", self.job_id, error)
            return False


def _runner(job: dict, sweeps: SweepHost) -> Callable[..., dict[str, Any]]:
    if job["type"] == SWEEP:
        return partial(run_sweep, host=sweeps)
    if job["type"] == FINE_TUNE and "trial" in job["params"]:
        return partial(run_trial, report_epoch=sweeps.report_epoch)
    return RUNNERS[job["type"]]


def run_job(job_id: str, worker: Worker) -> str:
    """`job_id`: the job the message names; the job run is the one whose turn it is
    (JobStore.claim_next), most often that one."""
    name = worker_name()
    claimed = worker.store.claim_next(job_id, name)
    if claimed is None:
        log.info("no job is queued (job %s was cancelled, or runs or ran already); nothing run", job_id)
        return "skipped"
    token = logs.job_id.set(claimed)
    try:
        if claimed != job_id:
            log.info("a message for job %s runs job %s: its turn", job_id, claimed)
        job = worker.store.get(claimed)
        run = partial(_run_measured, job, worker, name)
        if job["type"] == SWEEP:
            # it waits on its trials: on a thread, so this worker's one slot runs them; not a daemon,
            # so that a stopping worker's process waits for it to go back to the queue
            threading.Thread(target=run, name=f"sweep-{claimed}").start()
            return "detached"
        return run()
    finally:
        logs.job_id.reset(token)


def _run_measured(job: dict, worker: Worker, name: str) -> str:
    token = logs.job_id.set(job["id"])
    try:
        log.info("job %s (%s) started, attempt %d", job["id"], job["type"], job["attempts"])
        started = time.perf_counter()
        with worker.metrics.running.track_inprogress():
            state = _run(job, worker, name)
        seconds = time.perf_counter() - started
        worker.metrics.record(job["type"], state, seconds)
        log.info("job %s (%s) ended %s after %.1f s", job["id"], job["type"], state, seconds)
        return state
    finally:
        logs.job_id.reset(token)


def _requeue(job_id: str, worker: Worker, name: str) -> str:
    """Back in the queue, its message sent again: `queued`; else as its record says (a cancel
    asked for meanwhile is honoured)."""
    try:
        if not worker.store.requeue(job_id, name):
            return _end(worker.store, job_id, "cancelled")
    except redis.RedisError as error:
        log.error("job %s could not go back to the queue (%s); it reads as lost once its lease passes", job_id, error)
        return "lost"
    try:
        worker.send(job_id)
    except Exception as error:  # kombu's and redis's connection errors alike: no record waits for nothing
        log.error("job %s: its message could not be sent again (%s)", job_id, error)
        return _end(worker.store, job_id, "failed", error=problem(
            503, "worker-stopped", "the worker running this job was stopped, and the job could not be queued "
                                   "again; submit it again").model_dump(exclude_none=True))
    with suppress(redis.RedisError):  # else it waits from when a worker receives its message
        worker.store.wait_for_turn(worker.store.get(job_id))
    log.warning("job %s goes back to the queue, to run afresh: this worker is stopping", job_id)
    return "queued"


def _end(store: JobStore, job_id: str, state: str, **fields: object) -> str:
    """Writes the job's end, retrying while Redis is away (1, 2, 4, 8 s); the state its record
    ends in: another one when the record had already ended (reaped as lost, or cancelled), `gone`
    when it is no more, and `failed` (result-too-large) for a result more than a record holds
    (JobStore.finish)."""
    for attempt in range(_END_ATTEMPTS):
        try:
            if store.finish(job_id, state, **fields):
                if (error := fields.get("error")) is not None:
                    log.warning("job %s failed: %s: %s", job_id, error["type"], error["detail"])
                return state
            try:
                ended = store.get(job_id)["state"]
            except NotFound:  # reaped as lost, then trimmed (its client's kept records) or expired
                log.warning("job %s ended %s here, but its record is gone; nothing is written", job_id, state)
                return "gone"
            log.warning("job %s ended %s here, but its record had already ended %s; nothing more is written",
                        job_id, state, ended)
            return ended
        except ResultTooLarge as refused:
            return _end(store, job_id, "failed",
                        error=problem(refused.status, refused.code, refused.detail).model_dump(exclude_none=True))
        except redis.RedisError as error:
            log.warning("job %s: its end could not be written (%s); trying again", job_id, error)
            if attempt + 1 < _END_ATTEMPTS:
                time.sleep(2 ** attempt)
    log.error("job %s: its end (%s) was never written; it will read as lost once its lease passes", job_id, state)
    return "lost"


def _published(job: dict, result: dict[str, Any]) -> str | None:
    """The model version a finished job's result names as the one it published: a fine-tune's
    (a sweep's trial keeps its model in its sweep's folder), a sweep's best trial's."""
    model = result.get("output_model") if job["type"] == SWEEP else \
        result.get("model") if job["type"] == FINE_TUNE else None
    return f"{model['id']}@{model['version']}" if model else None


def _cancel_requested(store: JobStore, job_id: str) -> bool:
    try:
        return store.cancel_requested(job_id)
    except redis.RedisError:  # _end's retries say what they find
        return False


def _succeed(job: dict, result: dict[str, Any], worker: Worker) -> str:
    """Writes a finished job's end. A job publishes its model before its end can name it; where
    the record does not end `succeeded` (a result too large to hold, Redis refusing every try, the
    record reaped as lost meanwhile, a cancel asked for while it published) that version is
    withdrawn, so that no model is left published by a job that reads as failed or cancelled. An
    end never written is tried once more as a failure that says so, rather than read as
    worker-lost once the lease passes."""
    store, job_id = worker.store, job["id"]
    if _cancel_requested(store, job_id):  # after its last stop check (publishing): withdrawn below
        ended = _end(store, job_id, "cancelled")
    else:
        ended = _end(store, job_id, "succeeded", result=result)
    if ended == "succeeded":
        return ended
    withdrawn = ""
    if (published := _published(job, result)) is not None:
        try:
            worker.context.registry.delete(published)
            withdrawn = f"; the model version it published, {published}, was withdrawn"
            log.warning("job %s ended %s: the model version it published, %s, is withdrawn", job_id, ended, published)
        except (GazerError, OSError) as error:
            log.error("job %s ended %s, and %s, which it published, could not be withdrawn: %s", job_id, ended,
                      published, error)
    if ended != "lost":
        return ended
    return _end(store, job_id, "failed", error=problem(
        503, "result-not-recorded", f"the job finished, but the job store did not take its result{withdrawn}; "
                                    f"submit it again").model_dump(exclude_none=True))


def _run(job: dict, worker: Worker, name: str) -> str:
    """Runs a claimed job to its end; the state it ended in (`queued` when it went back)."""
    job_id, store, max_seconds = job["id"], worker.store, worker.max_seconds
    stop = threading.Event()
    beating = threading.Thread(target=_heartbeat, args=(store, job_id, stop), daemon=True)
    beating.start()
    should_stop = _StopCheck(store, job_id, name, max_seconds, worker.stopping)
    try:
        worker.context.storage.check_room()  # queued while there was room: a clear failure now, not a full disk later
        result = _runner(job, worker.sweeps)(job_id, job["params"], _progress_report(store, job_id), should_stop,
                                             worker.context)
    except JobCancelled:
        if should_stop.interrupted:
            return _requeue(job_id, worker, name)
        if should_stop.out_of_time:  # stopped as a cancelled job is, with what it had not finished
            return _end(store, job_id, "failed", error=problem(
                422, "job-time-limit", f"the job ran past this worker's limit of {max_seconds:g} s "
                                       f"(GAZER_MAX_JOB_SECONDS) and was stopped; ask for less work "
                                       f"(fewer epochs, steps, images or trials)").model_dump(exclude_none=True))
        return _end(store, job_id, "cancelled")
    except JobPruned as pruned:
        return _end(store, job_id, "pruned", result={"pruned": str(pruned)})
    except GazerError as error:
        return _end(store, job_id, "failed",
                    error=problem(error.status, error.code, error.detail).model_dump(exclude_none=True))
    except Exception as error:  # the job fails, the worker lives on
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            shutil.rmtree(worker.context.storage.job_artifacts(job_id), ignore_errors=True)  # what it wrote, freed
            return _end(store, job_id, "failed", error=problem(
                507, "storage-failed", f"the data folder is full ({error.strerror}): the job's results could not be "
                                       f"written; submit it again once an operator has freed space"
            ).model_dump(exclude_none=True))
        log.exception("job %s failed", job_id)
        return _end(store, job_id, "failed", error=problem(
            500, "job-crashed", f"the job stopped on an unexpected {type(error).__name__}; see the worker log"
        ).model_dump(exclude_none=True))
    finally:
        stop.set()
    return _succeed(job, result, worker)
