"""Retention with a real Redis and a real data folder: jobs that ended longer ago than the
retention go, with their artifacts; newer, queued and running ones stay."""

from __future__ import annotations

import asyncio
import os
import time

import optuna

from core.storage import Storage
from core.sweep_trials import trials_folder
from infra.job_store import JobStore
from infra.sweeps import SweepHost, drop_ended_studies, study_name
from service import retention
from service.retention import sweep_expired_jobs


def test_finished_jobs_and_their_artifacts_expire(redis_server, tmp_path):
    store = JobStore.from_url(redis_server.url, lease_seconds=60)
    storage = Storage(tmp_path)
    old, queued, running = (store.create("activation-maximization", {"n": n}) for n in range(3))
    assert store.claim(running["id"], "test-worker")
    store.finish(old["id"], "succeeded", result={"images": []})
    for job in (old, running):
        storage.job_artifacts(job["id"]).mkdir(parents=True)
        (storage.job_artifacts(job["id"]) / "target-0.png").write_bytes(b"png")
    orphan = storage.job_artifacts("0" * 32)
    orphan.mkdir(parents=True)
    time.sleep(1.5)
    recent = store.create("activation-maximization", {"n": 3})
    store.finish(recent["id"], "failed", error={"detail": "x"})

    removed = sweep_expired_jobs(store, storage, retention_seconds=1.0)

    assert sorted(removed) == sorted([old["id"], orphan.name])
    assert not store.exists(old["id"]) and not storage.job_artifacts(old["id"]).exists() and not orphan.exists()
    assert all(store.exists(job["id"]) for job in (queued, running, recent))
    assert storage.job_artifacts(running["id"]).exists()
    assert old["id"] not in [job["id"] for job in store.list()]


def test_the_studies_and_trials_of_sweeps_that_ended_without_removing_them_go(redis_server, tmp_path):
    """Lost with its worker, or cancelled while back in the queue, a sweep leaves its study in
    Redis (which refuses writes when full), and its trials' weights (13 MB each) until its record
    expired; a queued or running sweep keeps its own."""
    store, storage = JobStore.from_url(redis_server.url, lease_seconds=60), Storage(tmp_path)
    host = SweepHost(store, send=lambda job_id: None, redis_url=redis_server.url, most_parallel=1)
    ended, queued, running = (store.create("sweep", {})["id"] for _ in range(3))
    gone = "f" * 32  # its record expired
    assert store.claim(running, "worker") and store.finish(ended, "failed", error={"detail": "lost"})
    for sweep in (ended, queued, running, gone):
        optuna.create_study(study_name=study_name(sweep), storage=host.storage(sweep)).ask()
        (trials_folder(storage, sweep) / "0").mkdir(parents=True)
        (trials_folder(storage, sweep) / "0" / "model.safetensors").write_bytes(b"weights")
    (storage.job_artifacts(ended) / "report.json").write_text("{}")  # not the trials': it stays

    assert sorted(drop_ended_studies(store, storage)) == sorted([ended, gone])
    left = {key.split(":")[2] for key in store.redis.scan_iter(match="gazer:optuna:*")}
    assert left == {queued, running}
    assert {sweep for sweep in (ended, queued, running, gone) if trials_folder(storage, sweep).exists()} == left
    assert (storage.job_artifacts(ended) / "report.json").exists() and not storage.job_artifacts(gone).exists()


def test_a_staging_folder_left_while_the_api_runs_is_swept_by_the_next_round(redis_server, tmp_path, monkeypatch):
    """A worker killed while it published left `.staging-*` until the API's next start: only the
    start swept."""
    store, storage = JobStore.from_url(redis_server.url, lease_seconds=60), Storage(tmp_path)
    left = storage.models / "pets" / ".staging-1"
    monkeypatch.setattr(retention, "SWEEP_EVERY_SECONDS", 0.5)

    async def rounds() -> None:
        sweeping = asyncio.create_task(retention.sweep_forever(store, storage, retention_seconds=3600.0))
        await asyncio.sleep(0.2)  # the first round has run
        left.mkdir(parents=True)
        os.utime(left, (time.time() - 3700, time.time() - 3700))
        await asyncio.sleep(1.0)
        sweeping.cancel()

    asyncio.run(rounds())
    assert not left.exists()
