"""One API process against several: closed-loop predict load and the memory each process holds.

  python -m bench.processes [--processes 1,2] [--clients 8] [--seconds 20]

For each process count: `python -m service` with GAZER_API_PROCESSES=N (one data folder for all
runs, so the ONNX export is made once), then `--clients` threads, each on its own keep-alive
connection, posting foolbox's ImageNet JPEGs (one per request) to predict as fast as answers come
back, for `--seconds`. Prints requests/s, p50 and p99 latency, and each process's RSS and USS
(memory no other process shares: what one more process costs) sampled at the end of the load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from bench.common import Client, report, run_timed
from infra.embedded_redis import free_port
from infra.processes import stop_process
from support import foolbox_imagenet_photos, multipart

MODEL = "efficientnet_lite0"
MB = 1024 * 1024


def start_service(processes: int, data_dir: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "PORT": str(port), "GAZER_DATA_DIR": str(data_dir), "GAZER_ACCESS_LOG": "0",
           "GAZER_MAX_QUEUED_PER_CLIENT": "1000000",  # every client of this bench comes from one address
           "GAZER_API_PROCESSES": str(processes)}
    env.pop("GAZER_REDIS_URL", None)
    log = open(data_dir / f"service-{processes}.log", "wb")  # noqa: SIM115 (the child holds it)
    return subprocess.Popen([sys.executable, "-m", "service"], env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_all_ready(process: subprocess.Popen, port: int, processes: int, timeout: float = 300) -> None:
    """Until every API process answers: with several, readiness is asked on fresh connections
    until /metrics shows as many processes answering as were started."""
    deadline = time.time() + timeout
    answered: set[int] = set()
    while len(answered) < processes:
        if time.time() > deadline or process.poll() is not None:
            raise RuntimeError(f"the service did not become ready ({len(answered)} of {processes} processes)")
        try:
            client = Client(port)
            if client.get_json("/readyz")[0] == 200:
                if processes == 1:
                    return
                answered = set(answering_pids(client))
        except OSError:
            pass
        time.sleep(0.3)


def answering_pids(client: Client) -> list[int]:
    client.connection.request("GET", "/metrics")
    text = client.connection.getresponse().read().decode()
    return [int(line.split('pid="')[1].split('"')[0]) for line in text.splitlines()
            if line.startswith("gazer_http_requests_answered{")]


def serving_processes(process: subprocess.Popen) -> list[tuple[int, str]]:
    """(pid, role) of the server: the uvicorn parent alone, or the parent and its workers."""
    parent = psutil.Process(process.pid)
    workers = [child for child in parent.children()
               if "resource_tracker" not in " ".join(child.cmdline()) and "redis-server" not in child.name()]
    if not workers:
        return [(parent.pid, "api")]
    return [(parent.pid, "supervisor")] + [(child.pid, "api") for child in workers]


def closed_loop(port: int, bodies: list[tuple[bytes, str]], clients: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def run(offset: int) -> None:
        client = Client(port)
        mine, index = [], offset
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            client.post(f"/v1/models/{MODEL}/predict", *bodies[index % len(bodies)])
            mine.append(time.perf_counter() - started)
            index += 1
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run, args=(offset,)) for offset in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def memory(process: subprocess.Popen) -> list[tuple[int, str, float, float]]:
    rows = []
    for pid, role in serving_processes(process):
        info = psutil.Process(pid).memory_full_info()
        rows.append((pid, role, info.rss / MB, info.uss / MB))
    return rows


def measure(processes: int, data_dir: Path, bodies: list[tuple[bytes, str]], clients: int,
            seconds: float) -> None:
    port = free_port()
    process = start_service(processes, data_dir, port)
    try:
        wait_all_ready(process, port, processes)
        closed_loop(port, bodies, clients, 2.0)  # warm-up: first requests, thread pools, allocator
        started = time.perf_counter()
        sampled: list[list[tuple[int, str, float, float]]] = []
        sampler = threading.Timer(seconds * 0.9, lambda: sampled.append(memory(process)))
        sampler.start()
        latencies = closed_loop(port, bodies, clients, seconds)
        elapsed = time.perf_counter() - started
        sampler.join()
    finally:
        stop_process(process)
    latencies.sort()
    rows = [
        ("requests/s", f"{len(latencies) / elapsed:.1f}"),
        ("p50 ms", f"{statistics.median(latencies) * 1000:.1f}"),
        ("p99 ms", f"{latencies[int(0.99 * (len(latencies) - 1))] * 1000:.1f}"),
    ]
    api = [row for row in sampled[0] if row[1] == "api"]
    for pid, role, rss, uss in sampled[0]:
        rows.append((f"{role} pid {pid}", f"RSS {rss:.0f} MB, USS {uss:.0f} MB"))
    rows.append(("API processes in all", f"RSS {sum(row[2] for row in api):.0f} MB, "
                                         f"USS {sum(row[3] for row in api):.0f} MB"))
    report(f"{processes} API process{'es' if processes > 1 else ''}: {clients} clients, closed loop, "
           f"{seconds:.0f} s of predict (one foolbox JPEG per request)", rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", default="1,2", help="process counts to compare, comma-separated")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    bodies = [multipart([(path.name, path.read_bytes())]) for path, _ in foolbox_imagenet_photos()]
    data_dir = Path(tempfile.mkdtemp(prefix="gazer-bench-processes-"))
    print(f"{os.cpu_count()} CPUs; logs in {data_dir}")
    for processes in (int(count) for count in args.processes.split(",")):
        measure(processes, data_dir, bodies, args.clients, args.seconds)


if __name__ == "__main__":
    run_timed(main)
