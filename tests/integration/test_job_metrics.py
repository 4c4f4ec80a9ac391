"""Job metrics: the API reads jobs by type and state and the queue depth from Redis at scrape
time, at most once a second however many scrape; a worker started with
GAZER_WORKER_METRICS_PORT serves its own job metrics."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
from prometheus_client.parser import text_string_to_metric_families

from infra.embedded_redis import EmbeddedRedis
from infra.job_metrics import JobsCollector
from infra.job_store import JobStore
from tests.integration.conftest import wait_for
from tests.live_service import free_port

JOB_TYPE = "activation-maximization"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(scraped: dict, name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


def test_queued_then_finished_job_in_api_and_worker_metrics(api, start_worker):
    response = api.post(f"/v1/jobs/{JOB_TYPE}", json={"model": "efficientnet_lite0", "target": {"class": 130},
                                                      "steps": 3, "size": 64})
    assert response.status_code == 202, response.text
    job = response.json()
    job_type = job["type"]
    waiting = samples(api.get("/metrics").text)  # no worker yet: the job waits in the queue
    assert value(waiting, "gazer_jobs", type=job_type, state="queued") == 1
    assert value(waiting, "gazer_queue_depth") == 1 and value(waiting, "gazer_job_records") == 1

    port = free_port()
    worker = start_worker(worker_metrics_port=port)
    assert wait_for(api, job["id"], ("succeeded", "failed"), timeout=300)["state"] == "succeeded"

    done = samples(api.get("/metrics").text)
    assert value(done, "gazer_jobs", type=job_type, state="succeeded") == 1
    assert value(done, "gazer_jobs", type=job_type, state="queued") == 0
    assert value(done, "gazer_queue_depth") == 0
    assert "gazer_job_duration_seconds" not in api.get("/metrics").text  # the workers' own histogram, below

    own = samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
    assert value(own, "gazer_worker_job_duration_seconds_count", type=job_type, outcome="succeeded") == 1
    assert value(own, "gazer_worker_job_duration_seconds_sum", type=job_type, outcome="succeeded") > 0
    assert value(own, "gazer_worker_jobs_finished_total", type=job_type, state="succeeded") == 1
    assert value(own, "gazer_worker_jobs_running") == 0

    entries = [json.loads(line) for line in worker.log().splitlines() if line.strip()]  # JSON lines only
    assert any(e["message"].endswith(" ready.") for e in entries)
    assert any(e["message"] == f"worker metrics on 127.0.0.1 port {port}" for e in entries)
    told = [e["message"] for e in entries if e.get("job_id") == job["id"]]  # a job is followed by its id
    assert f"job {job['id']} ({job_type}) started, attempt 1" in told, told
    assert any(line.startswith(f"job {job['id']} ({job_type}) ended succeeded after ") for line in told), told


def test_scrapes_share_one_reading_a_second(tmp_path):
    """64 concurrent scrapes cost Redis what one does; a job made after a reading shows once the
    reading is max_age old."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        store = JobStore.from_url(server.url, lease_seconds=60)
        for _ in range(50):
            store.create(JOB_TYPE, {})

        def queued(collector: JobsCollector) -> float:
            jobs = next(family for family in collector.collect() if family.name == "gazer_jobs")
            return sum(sample.value for sample in jobs.samples)

        def commands_run_by(scrapes) -> int:  # each INFO counts itself
            before = store.redis.info("stats")["total_commands_processed"]
            scrapes()
            return store.redis.info("stats")["total_commands_processed"] - before - 1

        one_scrape = commands_run_by(lambda: queued(JobsCollector(lambda: store)))
        assert one_scrape > 50  # each record is read
        collector = JobsCollector(lambda: store, max_age=60)
        with ThreadPoolExecutor(16) as pool:
            assert commands_run_by(lambda: list(pool.map(lambda _: queued(collector), range(64)))) == one_scrape
        store.create(JOB_TYPE, {})
        assert queued(collector) == 50  # the reading is younger than max_age
        collector.max_age = 0
        assert queued(collector) == 51
