"""Retention: finished jobs and their artifacts expire `GAZER_JOB_RETENTION_DAYS` after they
end, and the Optuna studies and trials' weights of sweeps that ended without removing theirs go
at the next sweep.
Data sets and model versions stay until deleted. The API sweeps when it starts and then every
hour; several API processes sweeping at once delete nothing twice (Redis decides)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time

from starlette.concurrency import run_in_threadpool

from core.storage import Storage
from infra.job_store import JobStore
from infra.sweeps import drop_ended_studies

log = logging.getLogger(__name__)
SWEEP_EVERY_SECONDS = 3600.0


def sweep_expired_jobs(store: JobStore, storage: Storage, retention_seconds: float) -> list[str]:
    """Removes the records and artifacts of jobs that ended more than `retention_seconds` ago,
    and artifact folders as old whose record is gone; returns the job ids removed."""
    cutoff = time.time() - retention_seconds
    removed: list[str] = []
    while expired := store.expire_finished(cutoff):
        removed += expired
        for job_id in expired:
            shutil.rmtree(storage.job_artifacts(job_id), ignore_errors=True)
    artifacts = storage.artifacts
    for folder in artifacts.iterdir() if artifacts.is_dir() else []:
        if folder.stat().st_mtime < cutoff and not store.exists(folder.name):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed


async def sweep_forever(store: JobStore, storage: Storage, retention_seconds: float) -> None:
    """Also removes partial folders an hour old (Storage.sweep_partial_folders), and, until it has
    worked once in this process, puts every job in its key's job set, every trial in its sweep's
    and every queued or running job in the set of them all (JobStore.index_jobs): an upgraded
    Redis's old jobs are found there too."""
    owners_indexed = False
    while True:
        try:
            # at start, and from then on: a worker killed while it published leaves one while the API runs
            for swept in await run_in_threadpool(storage.sweep_partial_folders):
                log.warning("removed %s, left behind by an interrupted ingest, save or delete", swept)
            if not owners_indexed:
                indexed = await run_in_threadpool(store.index_jobs)
                if indexed:
                    log.info("%d jobs of API keys are in their keys' job sets", indexed)
                owners_indexed = True
            removed = await run_in_threadpool(sweep_expired_jobs, store, storage, retention_seconds)
            if removed:
                log.info("retention: removed %d finished jobs and their artifacts", len(removed))
            studies = await run_in_threadpool(drop_ended_studies, store, storage)
            if studies:
                log.info("retention: removed the studies and trials of %d sweeps that ended without removing them",
                         len(studies))
        except Exception:  # Redis away, a folder in use: the next sweep tries again
            log.exception("retention sweep failed")
        await asyncio.sleep(SWEEP_EVERY_SECONDS)
