"""Faults around Redis with real processes: Redis stopped under a running job, a job reaped as
lost while its worker still runs it, and a submit and reads while Redis is down. Each ends in a recovery
or a clear error, with nothing stuck and nothing run twice."""

from __future__ import annotations

import time

import psutil
import redis

from infra.embedded_redis import EmbeddedRedis
from infra.job_store import READINESS_REDIS_SECONDS, REDIS_SOCKET_SECONDS
from support import shapes_archive, upload
from tests.integration.conftest import LEASE_SECONDS, make_client, wait_for
from tests.integration.test_jobs import long_maximization, submit


def running(api, job: dict, steps: int = 2) -> dict:
    return wait_for(api, job["id"], ("running",), timeout=120,
                    condition=lambda j: (j["progress"] or {}).get("step", 0) >= steps)


def test_a_redis_outage_under_a_running_job_does_not_lose_it(api, workers, redis_server):
    workers()
    job = submit(api, "activation-maximization", long_maximization())
    running(api, job)
    redis_server.stop()
    time.sleep(2)  # several heartbeats fail
    redis_server.start()  # same port and AOF
    time.sleep(LEASE_SECONDS * 2)  # a dead heartbeat thread would have let the lease run out by now
    alive = running(api, job, steps=api.get(f"/v1/jobs/{job['id']}").json()["progress"]["step"] + 1)
    assert alive["attempts"] == 1
    assert api.delete(f"/v1/jobs/{job['id']}").status_code == 202
    assert wait_for(api, job["id"], ("cancelled", "failed", "succeeded"), timeout=60)["state"] == "cancelled"


def test_a_job_reaped_as_lost_stops_and_publishes_nothing(api, workers):
    worker = workers()
    created = api.post("/v1/datasets", files=[upload(shapes_archive(per_class=6), "shapes.zip", "application/zip")])
    assert created.status_code == 201, created.text
    job = submit(api, "fine-tune", {"dataset_id": created.json()["id"], "output_model": "reaped", "epochs": 500,
                                    "early_stopping_patience": 500,
                                    "batch_size": 4, "input_size": 64, "strategy": "feature_extraction"})
    wait_for(api, job["id"], ("running",), timeout=120, condition=lambda j: (j["progress"] or {}).get("step", 0) >= 1)
    lost = {"type": "/problems/worker-lost", "title": "Internal server error", "status": 500, "detail": "test"}
    assert api.app.state.queue.store.finish(job["id"], "failed", error=lost)  # what reaping a lost job does
    deadline = time.time() + 60
    while "had already ended failed" not in worker.log():
        assert time.time() < deadline, worker.log()[-3000:]
        time.sleep(0.2)
    assert api.get("/v1/models/reaped").status_code == 404
    final = api.get(f"/v1/jobs/{job['id']}").json()
    assert final["state"] == "failed" and final["error"]["detail"] == "test"


def test_a_submit_while_redis_is_down_is_a_503_and_leaves_nothing(api, workers, redis_server):
    workers()
    before = api.get("/v1/jobs").json()["count"]
    redis_server.stop()
    try:
        refused = api.post("/v1/jobs/activation-maximization", json=long_maximization(steps=3))
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] and "cannot take jobs now" in refused.json()["detail"]
        for read in ("/v1/jobs", "/v1/jobs/0123456789abcdef0123456789abcdef"):  # reads were a 500
            answer = api.get(read)
            assert answer.status_code == 503 and answer.headers["retry-after"], answer.text
            assert "Redis" in answer.json()["detail"] and answer.json()["type"] == "/problems/queue-unavailable"
    finally:
        redis_server.start()
    assert api.get("/v1/jobs").json()["count"] == before
    job = submit(api, "activation-maximization", long_maximization(steps=3))
    assert wait_for(api, job["id"], ("succeeded", "failed"), timeout=120)["state"] == "succeeded"


def while_hung(redis_server, call):
    """`call`'s answer and how long it took with Redis stopped (SIGSTOP), not gone."""
    hung = psutil.Process(redis_server.process.pid)
    hung.suspend()
    try:
        started = time.monotonic()
        answer = call()
        return answer, time.monotonic() - started
    finally:
        hung.resume()


def test_a_hung_redis_is_a_503_in_bounded_time(api, redis_server):
    """Redis stopped (SIGSTOP), not gone: a job listing waited as long as it hung."""
    answer, waited = while_hung(redis_server, lambda: api.get("/v1/jobs"))
    assert answer.status_code == 503 and answer.headers["retry-after"], answer.text
    assert REDIS_SOCKET_SECONDS - 1 < waited < REDIS_SOCKET_SECONDS + 10, waited
    assert api.get("/v1/jobs").status_code == 200


def test_readiness_answers_within_a_probes_time_while_redis_hangs(api, redis_server):
    """Redis stopped (SIGSTOP): readiness waited out REDIS_SOCKET_SECONDS (10 s), where a probe
    gives up after a second or two."""
    assert api.get("/readyz").status_code == 200
    answer, waited = while_hung(redis_server, lambda: api.get("/readyz"))
    assert answer.status_code == 503 and answer.json()["redis"].startswith("unreachable"), answer.text
    assert waited < READINESS_REDIS_SECONDS + 1, waited
    assert api.get("/readyz").status_code == 200


def test_readiness_reports_redis_and_the_live_workers(api, workers, redis_server):
    workers()
    deadline = time.time() + 30
    while (ready := api.get("/readyz")).json()["workers"] < 1:
        assert time.time() < deadline, ready.json()
        time.sleep(0.2)
    assert ready.status_code == 200 and ready.json()["redis"] == "ready"
    redis_server.stop()
    try:
        down = api.get("/readyz")
        assert down.status_code == 503 and down.json()["redis"].startswith("unreachable")
    finally:
        redis_server.start()
    assert api.get("/readyz").status_code == 200


def test_a_full_redis_is_a_clear_507(tmp_path):
    with EmbeddedRedis(tmp_path / "redis") as own, make_client(own, tmp_path / "data") as client:
        redis.Redis.from_url(own.url).config_set("maxmemory", 1)  # far below what it holds: every write refused
        refused = client.post("/v1/jobs/activation-maximization", json=long_maximization(steps=3))
        assert refused.status_code == 507, refused.text
        assert "maxmemory" in refused.json()["detail"] and refused.json()["title"] == "Insufficient storage"
        assert client.get("/v1/jobs").json()["count"] == 0
