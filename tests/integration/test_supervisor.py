"""`make run` supervises its children: a worker killed (as the kernel's OOM killer would) is
started again while the API keeps answering, and so is the embedded Redis; jobs then run."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import psutil
import pytest

from tests.live_service import LiveService


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with LiveService(tmp_path_factory.mktemp("supervised")) as live:
        yield live


def child(service: LiveService, module: str) -> psutil.Process:
    for process in psutil.Process(service.process.pid).children():
        try:
            command = process.cmdline()
        except (psutil.ZombieProcess, psutil.NoSuchProcess):  # killed, not yet reaped by make run
            continue
        if command[-2:] == ["-m", module] or (module == "redis" and "redis-server" in command[0]):
            return process
    raise AssertionError(f"no {module} child of make run")


def replaced(service: LiveService, module: str, old_pid: int, timeout: float = 60) -> psutil.Process:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            found = child(service, module)
            if found.pid != old_pid:
                return found
        except AssertionError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{module} was not started again within {timeout} s:\n{service.log()[-3000:]}")


def run_a_job(service: LiveService) -> dict:
    with httpx.Client(base_url=service.url, timeout=30) as client:
        submitted = client.post("/v1/jobs/activation-maximization",
                                json={"model": "efficientnet_lite0", "target": {"class": 1}, "steps": 2, "size": 64})
        assert submitted.status_code == 202, submitted.text
        deadline = time.time() + 120
        while (job := client.get(f"/v1/jobs/{submitted.json()['id']}").json())["state"] not in (
                "succeeded", "failed", "cancelled"):
            assert time.time() < deadline, job
            time.sleep(0.2)
        return job


def test_a_killed_worker_is_started_again_and_the_api_never_stops_answering(service):
    answers: list[int] = []
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=service.url, timeout=5) as client:
            while not stop.is_set():
                answers.append(client.get("/healthz").status_code)
                time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        worker = child(service, "worker")
        worker.send_signal(signal.SIGKILL)
        replaced(service, "worker", worker.pid)
    finally:
        stop.set()
        poller.join()
    assert len(answers) > 10 and set(answers) == {200}
    assert "worker (pid" in service.log() and "starting it again" in service.log()
    assert run_a_job(service)["state"] == "succeeded"


def test_a_killed_embedded_redis_is_started_again_with_its_data(service):
    before = run_a_job(service)
    redis = child(service, "redis")
    redis.send_signal(signal.SIGKILL)
    replaced(service, "redis", redis.pid)
    deadline = time.time() + 60
    while True:  # the API reconnects on its next command
        try:
            kept = httpx.get(f"{service.url}/v1/jobs/{before['id']}", timeout=5)
            if kept.status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.time() < deadline, service.log()[-3000:]
        time.sleep(0.5)
    assert kept.json()["state"] == "succeeded"  # appended to the AOF before the kill
    assert run_a_job(service)["state"] == "succeeded"
