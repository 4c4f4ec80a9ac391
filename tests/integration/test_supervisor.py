"""`make run` supervises its children: a worker killed (as the kernel's OOM killer would) is
started again while the API keeps answering, and so is the embedded Redis; jobs then run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest

from gazer import Client
from gazer.results import JobEvent
from tests.live_service import ROOT, LiveService


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


def test_ctrl_c_puts_the_running_job_back_in_the_queue_and_ends_event_streams_with_a_word(tmp_path):
    """A terminal's Ctrl-C signals `make run`'s whole process group. The embedded Redis was in it
    and stopped at once, so the worker could not put its job back ("could not go back to the
    queue"), and the job was lost. An open event stream held the API until it was killed, 30 s
    later, cutting the stream off mid-transfer. The client follows the job across the restart."""
    with LiveService(tmp_path) as service:
        follower = Client(service.url)
        followed: list[JobEvent | BaseException] = []

        def follow(job_id: str) -> None:
            try:
                followed.extend(follower.events(job_id))
            except BaseException as error:
                followed.append(error)

        with httpx.Client(base_url=service.url, timeout=30) as client:
            job = client.post("/v1/jobs/activation-maximization", json={
                "model": "efficientnet_lite0", "target": {"class": 1}, "steps": 10000, "size": 64}).json()
            deadline = time.time() + 120
            while client.get(f"/v1/jobs/{job['id']}").json()["state"] != "running":
                assert time.time() < deadline, service.log()[-3000:]
                time.sleep(0.2)
            events: list[str] = []
            following = threading.Thread(target=follow, args=(job["id"],))
            following.start()
            cli = subprocess.Popen([sys.executable, "-m", "gazer", "--url", service.url, "jobs", "follow", job["id"]],
                                   cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            bar: list[str] = []  # its progress bar, drawn when made, then at the stream's first event
            while sum(job["id"] in line for line in bar) < 2:
                bar.append(cli.stderr.readline())
                assert bar[-1] and len(bar) < 10, bar
            with client.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
                lines = stream.iter_lines()
                events.append(next(lines))  # the stream is open: its first event came
                started = time.monotonic()
                os.killpg(service.process.pid, signal.SIGINT)
                events += list(lines)
        assert service.process.wait(timeout=60) == 0
        stopped_in = time.monotonic() - started
    log = service.log()
    assert "event: expired" in events and any("/problems/server-stopping" in line for line in events), events[-5:]
    assert stopped_in < 15 and "did not stop in time" not in log, (stopped_in, log[-3000:])
    assert f"job {job['id']} goes back to the queue" in log and "could not go back" not in log, log[-3000:]
    with LiveService(tmp_path, port=service.port) as again:  # the same data folder: the job runs afresh
        deadline = time.time() + 120
        while (state := httpx.get(f"{again.url}/v1/jobs/{job['id']}").json()["state"]) == "queued":
            assert time.time() < deadline, again.log()[-3000:]
            time.sleep(0.5)
        assert state == "running", again.log()[-3000:]
        assert following.is_alive()  # still following, through the restart
        assert httpx.delete(f"{again.url}/v1/jobs/{job['id']}").status_code in (200, 202)
        following.join(timeout=60)
        # `gazer jobs follow` too, saying why it waits: with this server up, as it connects again
        # once a second (the job may end, cancelled, before it has)
        said, complained = cli.communicate(timeout=60)
    assert not any(isinstance(event, BaseException) for event in followed), followed[-3:]
    assert followed[-1].kind == "end" and followed[-1].job.state == "cancelled", followed[-1]
    complained = "".join(bar) + complained
    assert cli.returncode == 1 and "cancelled" in said + complained, (said, complained)
    assert "the server is stopping: following again once it answers" in complained, complained


def upload_in_flight(port: int) -> socket.socket:
    """A connection whose predict upload has begun and sends nothing more."""
    upload = socket.create_connection(("127.0.0.1", port))
    upload.sendall(b"POST /v1/models/efficientnet_lite0/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000\r\n\r\n--b\r\n")
    return upload


def test_a_second_ctrl_c_kills_what_the_first_is_waiting_for(tmp_path):
    """The first waits up to GAZER_STOP_SECONDS for the requests in flight, here an upload; a
    second did nothing more. One within a second of the first is the same stop, delivered twice."""
    with LiveService(tmp_path, stop_seconds=120) as service:
        launched = psutil.Process(service.process.pid).children(recursive=True)
        with upload_in_flight(service.port):
            time.sleep(1)
            os.killpg(service.process.pid, signal.SIGINT)
            time.sleep(0.05)
            os.killpg(service.process.pid, signal.SIGINT)  # the same stop twice, as make passes it on
            with pytest.raises(subprocess.TimeoutExpired):
                service.process.wait(timeout=5)  # the API answers the upload, given the time
            started = time.monotonic()
            os.killpg(service.process.pid, signal.SIGINT)
            service.process.wait(timeout=30)
        stopped_in = time.monotonic() - started
        _, alive = psutil.wait_procs(launched, timeout=10)
    assert not alive and stopped_in < 10, (alive, stopped_in)
    assert "SIGINT received again: killing them now" in service.log()


def test_a_request_the_stop_cuts_is_answered_503_not_a_plain_500(tmp_path):
    """GAZER_STOP_SECONDS=10: the API waits 5 s for an upload in flight, then cancels it. uvicorn
    answered that with a plain-text 500 "Internal Server Error"."""
    with LiveService(tmp_path, stop_seconds=10) as service:
        with upload_in_flight(service.port) as upload:
            time.sleep(1)
            os.killpg(service.process.pid, signal.SIGINT)
            upload.settimeout(60)
            answer = b""
            while chunk := upload.recv(65536):  # the answer closes the connection
                answer += chunk
        service.process.wait(timeout=60)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 "), answer[:500]
    assert b"retry-after: 1" in head.lower() and b"application/problem+json" in head.lower(), head
    assert json.loads(body)["detail"].startswith("the service is stopping"), body
