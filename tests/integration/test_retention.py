"""Retention with a real Redis and a real data folder: jobs that ended longer ago than the
retention go, with their artifacts; newer, queued and running ones stay."""

from __future__ import annotations

import time

from core.storage import Storage
from infra.job_store import JobStore
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
