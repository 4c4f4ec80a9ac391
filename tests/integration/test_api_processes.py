"""`make run` with GAZER_API_PROCESSES=2: two uvicorn processes answer one port, both on the
supervisor's Redis (neither starts its own), and /metrics, answered by either, counts the
requests of both; stopping `make run` stops all of them."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest

from service.metrics import MODELS_REFRESH_SECONDS
from support import chelsea, encode, upload
from tests.live_service import LiveService

ANSWERED = re.compile(r'^gazer_http_requests_answered\{pid="(\d+)"\} ([0-9.e+]+)$', re.MULTILINE)
LOADED = re.compile(r'^gazer_models_loaded ([0-9.e+]+)$', re.MULTILINE)
HEALTHZ = re.compile(r'^gazer_http_requests_total\{method="GET",route="/healthz",status="200"\} ([0-9.e+]+)$',
                     re.MULTILINE)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with LiveService(tmp_path_factory.mktemp("two-apis"), api_processes=2, access_log=0, stop_seconds=3) as live:
        yield live


def answered_by(service: LiveService) -> dict[int, float]:
    text = httpx.get(f"{service.url}/metrics", timeout=10).text
    return {int(pid): float(count) for pid, count in ANSWERED.findall(text)}


def on_fresh_connections(service: LiveService, path: str, count: int) -> list[httpx.Response]:
    """Each request on a connection of its own, 8 at a time, so that either process may accept it."""
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda _: httpx.get(f"{service.url}{path}", timeout=30), range(count)))


def api_processes(service: LiveService) -> set[int]:
    """The live uvicorn worker processes: children of `python -m service`, a child of `make run`."""
    for child in psutil.Process(service.process.pid).children():
        if child.cmdline()[-2:] == ["-m", "service"]:
            return {process.pid for process in child.children() if _serving(process)}
    raise AssertionError("no `python -m service` child of make run")


def _serving(process: psutil.Process) -> bool:
    try:
        return "resource_tracker" not in " ".join(process.cmdline())
    except (psutil.ZombieProcess, psutil.NoSuchProcess):  # died, not yet reaped by its supervisor
        return False


def test_two_processes_answer_one_port_and_are_each_ready(service):
    deadline = time.time() + 120
    while sum(count > 0 for count in answered_by(service).values()) < 2:  # the second may still be loading
        assert time.time() < deadline, service.log()[-3000:]
        on_fresh_connections(service, "/healthz", 8)
    before, readiness = answered_by(service), []
    while True:  # which process accepts a connection is the kernel's choice: ask until both have answered
        readiness += on_fresh_connections(service, "/readyz", 16)
        after = answered_by(service)
        if all(after[pid] > before[pid] for pid in after):
            break
        assert time.time() < deadline, (before, after)
    assert set(after) == api_processes(service)
    assert {answer.status_code for answer in readiness} == {200}
    assert {answer.json()["workers"] for answer in readiness} == {1}  # both see make run's worker
    assert "no GAZER_REDIS_URL" not in service.log()  # neither started a Redis of its own


def test_metrics_from_either_process_count_the_requests_of_both(service):
    def healthz_count() -> float:
        found = HEALTHZ.search(httpx.get(f"{service.url}/metrics", timeout=10).text)
        return float(found.group(1)) if found else 0.0

    before = healthz_count()
    assert {answer.status_code for answer in on_fresh_connections(service, "/healthz", 24)} == {200}
    counts = [healthz_count() - before for _ in range(4)]  # scrapes land on either process
    assert counts == [24.0] * 4


def test_loaded_models_read_the_same_from_either_process(service):
    """A second model, loaded by whichever process takes one predict: once each process has
    refreshed its gauge, scrapes answered by either count it (the most that one process serves);
    each process's own count made them alternate."""
    predicted = httpx.post(f"{service.url}/v1/models/efficientnet_lite1/predict", files=[upload(encode(chelsea()))],
                           timeout=120)
    assert predicted.status_code == 200, predicted.text
    time.sleep(MODELS_REFRESH_SECONDS + 1)
    before, loaded, deadline = answered_by(service), set(), time.time() + 60
    while True:  # until both processes have answered scrapes
        loaded |= {float(LOADED.search(scrape.text).group(1)) for scrape in on_fresh_connections(service, "/metrics", 8)}
        after = answered_by(service)
        if all(after[pid] > before[pid] + 1 for pid in after):
            break
        assert time.time() < deadline, (before, after)
    assert loaded == {2.0}


def test_an_api_process_that_dies_is_replaced_and_logged_as_a_warning(service):
    killed = min(api_processes(service))
    psutil.Process(killed).kill()
    # killed while its supervisor waited for its answer to a health ping, it is found dead only
    # when the ping times out (timeout_worker_healthcheck, 60 s: uvicorn's pipe stays open)
    deadline = time.time() + 90
    while len(api_processes(service) - {killed}) < 2:  # uvicorn's supervisor starts another
        assert time.time() < deadline, service.log()[-3000:]
        time.sleep(0.2)
    died = [json.loads(line) for line in service.log().splitlines() if f"Child process [{killed}] died" in line]
    assert [line["level"] for line in died] == ["WARNING"], died
    assert killed not in answered_by(service)  # a dead process's share is no longer shown


def test_a_killed_supervisor_takes_its_api_processes_with_it_and_is_started_again(service):
    """Its API processes outlived it, serving the port, and every new supervisor failed to bind
    it ("Address already in use"), then outlived make run too."""
    supervisor = next(child for child in psutil.Process(service.process.pid).children()
                      if child.cmdline()[-2:] == ["-m", "service"])
    orphans = [psutil.Process(pid) for pid in api_processes(service)]
    supervisor.kill()
    gone, alive = psutil.wait_procs(orphans, timeout=30)
    assert not alive, [(process.pid, process.cmdline()) for process in alive]
    deadline = time.time() + 180
    while True:  # the new supervisor's processes load the model, then answer
        try:
            if httpx.get(f"{service.url}/readyz", timeout=5).status_code == 200 and len(api_processes(service)) == 2:
                break
        except (httpx.TransportError, AssertionError, psutil.NoSuchProcess):
            pass
        assert time.time() < deadline, service.log()[-3000:]
        time.sleep(0.5)
    assert "Address already in use" not in service.log()


def test_make_run_stops_every_process_it_started_even_a_stuck_one(service):
    """The API's supervisor, stuck (SIGSTOP), is killed at GAZER_STOP_SECONDS, and with it its
    API processes: killing the supervisor alone left them serving on their own. Last: it ends
    the module's service."""
    started = [process for process in psutil.Process(service.process.pid).children(recursive=True)]
    supervisor = next(process for process in started if process.cmdline()[-2:] == ["-m", "service"])
    assert len(api_processes(service)) == 2
    supervisor.suspend()
    service.process.terminate()
    service.process.wait(timeout=60)
    gone, alive = psutil.wait_procs(started, timeout=10)
    assert not alive, [(process.pid, process.cmdline()) for process in alive]
    assert "did not stop in time (GAZER_STOP_SECONDS); killed" in service.log()
