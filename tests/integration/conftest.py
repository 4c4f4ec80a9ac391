"""A real redis-server, real Celery worker processes and the real API, sharing one data dir."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from infra.embedded_redis import EmbeddedRedis
from infra.processes import stop_process
from service.app import create_app
from service.settings import Settings

LEASE_SECONDS = 4.0
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("jobs-data")


class Worker:
    """`python -m worker` as a child process, with its output kept in a file."""

    def __init__(self, redis_url: str, data_dir: Path, log_path: Path, **settings: object) -> None:
        env = {**os.environ, "GAZER_REDIS_URL": redis_url, "GAZER_DATA_DIR": str(data_dir),
               "GAZER_JOB_LEASE_SECONDS": str(LEASE_SECONDS), "PYTHONPATH": str(ROOT)}
        env.update({f"GAZER_{key.upper()}": str(value) for key, value in settings.items()})
        self.log_path = log_path
        self.process = subprocess.Popen([sys.executable, "-m", "worker"], cwd=ROOT, env=env,
                                        stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
        deadline = time.time() + 90
        while "ready." not in self.log() and time.time() < deadline:
            assert self.process.poll() is None, self.log()
            time.sleep(0.2)
        assert "ready." in self.log(), self.log()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        stop_process(self.process)


@pytest.fixture(scope="module")
def start_worker(redis_server, shared_dir, tmp_path_factory):
    started: list[Worker] = []

    def start(**settings: object) -> Worker:
        log_path = tmp_path_factory.mktemp("worker") / "worker.log"
        worker = Worker(redis_server.url, shared_dir, log_path, **settings)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(scope="module")
def workers(start_worker):
    """Returns the module's one live worker, starting a new one when a test stopped it."""
    pool = {"current": start_worker()}

    def live():
        if pool["current"].process.poll() is not None:
            pool["current"] = start_worker()
        return pool["current"]

    return live


def make_client(redis_server, shared_dir, **settings: object) -> TestClient:
    app = create_app(Settings(data_dir=shared_dir, redis_url=redis_server.url, job_lease_seconds=LEASE_SECONDS,
                              **settings))
    return TestClient(base_url="http://localhost", app=app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def api(redis_server, shared_dir):
    with make_client(redis_server, shared_dir) as client:
        yield client


def wait_for(client: TestClient, job_id: str, states: tuple[str, ...], timeout: float = 300,
             condition=None) -> dict:
    deadline = time.time() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in states and (condition is None or condition(job)):
            return job
        assert time.time() < deadline, f"job {job_id} still {job['state']} after {timeout} s: {job}"
        time.sleep(0.2)


def follow(client: TestClient, job_id: str) -> list[tuple[str, dict]]:
    """A job's server-sent events, (event, data), up to and with its `end`."""
    events = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[len("data: "):])))
                if kind == "end":
                    break
    return events
