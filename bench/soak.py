"""Soak: `python -m service.launch` (what `make run` starts: embedded Redis, one worker, the API)
under mixed load for `--minutes N`, sampling what it holds every minute, to show whether
anything grows: RSS, open file descriptors and threads of the API and the worker, Redis's
used_memory and the data folder's size.

The load, all at once: predict and explain clients on real photos, small activation-maximization
jobs followed through their event streams, bad inputs (truncated JPEGs, random bytes, an unknown
model, an over-budget explain: 4xx expected), `--streams` idle event streams and a slowloris
(sockets sending request headers one byte every few seconds).

The idle streams follow a *parked* job: a `queued` record made in the job store without a Celery
message, so it stays queued (and its streams quiet, keep-alive comments only) for the whole run
while the one worker serves the small jobs; it is cancelled at the end. Streams per client are
capped at 100 by default (GAZER_MAX_EVENT_STREAMS_PER_CLIENT); this run raises the cap to
`--stream-cap` so that all of them open, since every stream here comes from one address.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python -m bench.soak --minutes 20
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import redis

from infra.job_store import JobStore
from infra.processes import stop_process
from support import chelsea, coffee, encode, foolbox_imagenet_photos

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = httpx.Timeout(60.0, connect=10.0)
STREAM_READ_TIMEOUT = 40.0  # keep-alive comments come every 15 s: a quiet stream past this is broken
MODEL = "efficientnet_lite0"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Service:
    """`python -m service.launch` on a free port with its own data dir; its log lives outside it."""

    def __init__(self, stream_cap: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.scratch = Path(tempfile.mkdtemp(prefix="gazer-soak-"))
        self.data_dir = self.scratch / "data"
        self.log_path = self.scratch / "service.log"
        env = {**os.environ, "PORT": str(self.port), "GAZER_DATA_DIR": str(self.data_dir),
               "PYTHONPATH": str(ROOT), "GAZER_ACCESS_LOG": "0",
               "GAZER_MAX_EVENT_STREAMS_PER_CLIENT": str(stream_cap),
               "GAZER_MAX_EVENT_STREAMS": str(max(1000, stream_cap + 50))}
        env.pop("GAZER_REDIS_URL", None)
        self.log_file = open(self.log_path, "wb")  # noqa: SIM115 (closed by stop())
        self.process = subprocess.Popen([sys.executable, "-m", "service.launch"], cwd=ROOT, env=env,
                                        stdout=self.log_file, stderr=subprocess.STDOUT)
        self.known: dict[int, psutil.Process] = {}

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                ready = httpx.get(f"{self.url}/readyz", timeout=5)
                if ready.status_code == 200 and ready.json().get("workers", 0) >= 1:
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the service was not ready after {timeout} s:\n{self.log_tail()}")

    def roles(self) -> dict[str, list[psutil.Process]]:
        found: dict[str, list[psutil.Process]] = {"api": [], "worker": [], "redis": []}
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return found
        for child in children:
            try:
                command = " ".join(child.cmdline())
            except psutil.Error:
                continue
            self.known[child.pid] = child
            role = ("redis" if "redis-server" in command else "worker" if "-m worker" in command
                    else "api" if "-m service" in command else None)
            if role:
                found[role].append(child)
        return found

    def redis_url(self) -> str:
        found = re.search(r"embedded redis-server at (redis://\S+)", self.log_path.read_text(errors="replace"))
        if not found:
            raise RuntimeError(f"no embedded redis-server in the service's log:\n{self.log_tail()}")
        return found.group(1)

    def stop(self) -> None:
        self.roles()  # remember the children, in case the launcher has to be killed
        stop_process(self.process, timeout=40)
        for child in self.known.values():  # only what this launcher started
            try:
                if child.is_running():
                    child.kill()
            except psutil.Error:
                pass
        self.log_file.close()


def disk_usage(folder: Path) -> int:
    total = 0
    for directory, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_blocks * 512
            except OSError:
                pass
    return total


class Stats:
    def __init__(self) -> None:
        self.status: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.latency: dict[str, list[float]] = collections.defaultdict(list)
        self.notes: collections.Counter = collections.Counter()

    def record(self, kind: str, status: object, seconds: float | None = None) -> None:
        self.status[kind][str(status)] += 1
        if seconds is not None:
            self.latency[kind].append(seconds)


def sample(service: Service, redis_client: redis.Redis, elapsed: float) -> dict[str, float]:
    row: dict[str, float] = {"minute": elapsed / 60}
    for role, processes in service.roles().items():
        rss = fds = threads = 0
        for process in processes:
            try:
                with process.oneshot():
                    rss += process.memory_info().rss
                    fds += process.num_fds()
                    threads += process.num_threads()
            except psutil.Error:
                pass
        row[f"{role}_rss_mb"] = rss / 2**20
        if role != "redis":
            row[f"{role}_fds"] = fds
            row[f"{role}_threads"] = threads
    try:
        row["redis_used_mb"] = redis_client.info("memory")["used_memory"] / 2**20
    except redis.RedisError:
        row["redis_used_mb"] = float("nan")
    row["disk_mb"] = disk_usage(service.data_dir) / 2**20
    return row


COLUMNS = ["minute", "api_rss_mb", "api_fds", "api_threads", "worker_rss_mb", "worker_fds", "worker_threads",
           "redis_rss_mb", "redis_used_mb", "disk_mb"]


def print_row(row: dict[str, float], header: bool = False) -> None:
    if header:
        print("  ".join(f"{name:>14}" for name in COLUMNS))
    print("  ".join(f"{row.get(name, float('nan')):>14.1f}" for name in COLUMNS), flush=True)


class Load:
    def __init__(self, service: Service, args: argparse.Namespace, parked_job: str) -> None:
        self.service = service
        self.args = args
        self.parked_job = parked_job
        self.stats = Stats()
        self.stopping = asyncio.Event()
        photos = [encode(chelsea()), encode(coffee())] + [path.read_bytes() for path, _ in foolbox_imagenet_photos()]
        self.photos = photos
        self.truncated = photos[0][: len(photos[0]) // 3]
        self.streams_open = 0

    async def _timed(self, kind: str, call) -> httpx.Response | None:
        started = time.perf_counter()
        try:
            response = await call()
        except httpx.TimeoutException:
            self.stats.record(kind, "timeout", time.perf_counter() - started)
            return None
        except httpx.HTTPError as error:
            self.stats.record(kind, type(error).__name__, time.perf_counter() - started)
            return None
        self.stats.record(kind, response.status_code, time.perf_counter() - started)
        return response

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def predictor(self, client: httpx.AsyncClient) -> None:
        while not self.stopping.is_set():
            photo = random.choice(self.photos)
            await self._timed("predict", lambda photo=photo: client.post(
                f"/v1/models/{MODEL}/predict", files={"file": ("photo.jpg", photo, "image/jpeg")},
                data={"top_k": "3"}))

    async def explainer(self, client: httpx.AsyncClient) -> None:
        while not self.stopping.is_set():
            photo = random.choice(self.photos)
            method = random.choice(["gradcam", "cam", "saliency", "layercam"])
            await self._timed("explain", lambda photo=photo, method=method: client.post(
                f"/v1/models/{MODEL}/explain", files={"file": ("photo.jpg", photo, "image/jpeg")},
                data={"method": method}))

    async def bad_inputs(self, client: httpx.AsyncClient) -> None:
        cases = [
            ("bad:truncated-jpeg", lambda: client.post(f"/v1/models/{MODEL}/predict",
                                                      files={"file": ("cut.jpg", self.truncated, "image/jpeg")})),
            ("bad:random-bytes", lambda: client.post(f"/v1/models/{MODEL}/explain",
                                                    files={"file": ("noise.jpg", os.urandom(4096), "image/jpeg")})),
            ("bad:unknown-model", lambda: client.post("/v1/models/no_such_model/predict",
                                                     files={"file": ("photo.jpg", self.photos[0], "image/jpeg")})),
            # occlusion, window 4, stride 1 at 224: 48841 positions, far over the 8192 budget
            ("bad:over-budget", lambda: client.post(f"/v1/models/{MODEL}/explain",
                                                   files={"file": ("photo.jpg", self.photos[0], "image/jpeg")},
                                                   data={"method": "occlusion", "window": "4", "stride": "1"})),
            ("bad:unknown-job", lambda: client.get("/v1/jobs/nosuchjob00/events")),
        ]
        while not self.stopping.is_set():
            for kind, call in cases:
                await self._timed(kind, call)
            await self._pause(1.0)

    async def follow(self, client: httpx.AsyncClient, job_id: str) -> tuple[str, str | None]:
        """Reads a job's event stream to its end: (the last event's kind, its data)."""
        kind, data = "none", None
        async with client.stream("GET", f"/v1/jobs/{job_id}/events",
                                 timeout=httpx.Timeout(STREAM_READ_TIMEOUT, connect=10.0)) as response:
            if response.status_code != 200:
                return f"http {response.status_code}", None
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
        return kind, data

    async def jobs(self, client: httpx.AsyncClient) -> None:
        while not self.stopping.is_set():
            body = {"model": MODEL, "target": {"class": random.randrange(1000)}, "steps": random.randint(3, 10),
                    "size": 64}
            started = time.perf_counter()
            response = await self._timed("job:submit", lambda body=body: client.post("/v1/jobs/activation-maximization",
                                                                           json=body))
            if response is None or response.status_code != 202:
                await self._pause(2.0)
                continue
            try:
                kind, data = await self.follow(client, response.json()["id"])
                state = "?"
                if kind == "end" and data:
                    state = json.loads(data)["state"]
                self.stats.record("job:end-to-end", f"{kind}:{state}", time.perf_counter() - started)
            except httpx.HTTPError as error:
                self.stats.record("job:end-to-end", type(error).__name__, time.perf_counter() - started)
            await self._pause(0.5)

    async def idle_stream(self, client: httpx.AsyncClient) -> None:
        while not self.stopping.is_set():
            started = time.perf_counter()
            try:
                async with client.stream("GET", f"/v1/jobs/{self.parked_job}/events",
                                         timeout=httpx.Timeout(STREAM_READ_TIMEOUT, connect=30.0)) as response:
                    self.stats.record("stream:open", response.status_code, time.perf_counter() - started)
                    if response.status_code != 200:
                        await self._pause(5.0)
                        continue
                    self.streams_open += 1
                    try:
                        async for line in response.aiter_lines():
                            if line.startswith(":"):
                                self.stats.notes["stream keep-alive comments"] += 1
                            elif line.startswith("event: "):
                                self.stats.notes[f"stream event {line[7:]}"] += 1
                    finally:
                        self.streams_open -= 1
                    if not self.stopping.is_set():
                        self.stats.notes["idle streams ended by the server"] += 1
            except httpx.TimeoutException:
                self.stats.record("stream:open", "timeout", time.perf_counter() - started)
            except httpx.HTTPError as error:
                if not self.stopping.is_set():
                    self.stats.record("stream:open", type(error).__name__, time.perf_counter() - started)
                    await self._pause(2.0)

    async def slowloris(self, index: int) -> None:
        """Request headers one byte every `--slowloris-interval` seconds, for as long as the
        server keeps the socket; then again on a new one."""
        headers = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(
            f"X-Slow-{n}: {'a' * 20}\r\n".encode() for n in range(200)) + b"\r\n"
        while not self.stopping.is_set():
            opened = time.monotonic()
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.service.port), 10)
            except (OSError, TimeoutError) as error:
                self.stats.record("slowloris", f"connect {type(error).__name__}")
                await self._pause(2.0)
                continue
            self.stats.notes["slowloris sockets opened"] += 1
            outcome = "held until the end"
            try:
                for offset in range(len(headers)):
                    if self.stopping.is_set():
                        break
                    writer.write(headers[offset:offset + 1])
                    await writer.drain()
                    try:  # anything from the server (a response, or EOF) ends this socket
                        answer = await asyncio.wait_for(reader.read(256), self.args.slowloris_interval)
                        status = answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else "closed"
                        outcome = f"server answered {status}"
                        break
                    except TimeoutError:
                        pass
                else:
                    outcome = "headers completed"
            except (OSError, asyncio.IncompleteReadError) as error:
                outcome = f"server dropped it ({type(error).__name__})"
            except asyncio.CancelledError:  # the run ended while the server still held the socket
                self.stats.record("slowloris", outcome, time.monotonic() - opened)
                raise
            finally:
                writer.close()
            self.stats.record("slowloris", outcome, time.monotonic() - opened)

    async def run(self, samples: list[dict[str, float]], redis_client: redis.Redis) -> None:
        service, args = self.service, self.args
        work = httpx.AsyncClient(base_url=service.url, timeout=TIMEOUT,
                                 limits=httpx.Limits(max_connections=50, max_keepalive_connections=20))
        streams = httpx.AsyncClient(base_url=service.url, timeout=TIMEOUT,
                                    limits=httpx.Limits(max_connections=args.streams + 20,
                                                        max_keepalive_connections=0))
        tasks: list[asyncio.Task] = []
        started = time.monotonic()
        try:
            tasks += [asyncio.create_task(self.predictor(work)) for _ in range(args.predict_clients)]
            tasks += [asyncio.create_task(self.explainer(work)) for _ in range(args.explain_clients)]
            tasks += [asyncio.create_task(self.bad_inputs(work)), asyncio.create_task(self.jobs(work))]
            tasks += [asyncio.create_task(self.slowloris(n)) for n in range(args.slowloris)]
            for n in range(args.streams):  # ramp up: 50 a second
                tasks.append(asyncio.create_task(self.idle_stream(streams)))
                if n % 50 == 49:
                    await asyncio.sleep(1)
            end = started + args.minutes * 60
            next_sample = started + 60
            while True:
                await asyncio.sleep(min(1.0, max(0.0, min(end, next_sample) - time.monotonic())))
                if time.monotonic() >= min(next_sample, end):
                    row = await asyncio.to_thread(sample, service, redis_client, time.monotonic() - started)
                    row["streams_open"] = self.streams_open
                    samples.append(row)
                    print_row(row)
                    print(f"{'':>14}  (idle streams open: {self.streams_open})", flush=True)
                    next_sample += 60
                    if time.monotonic() >= end:
                        break
                if service.process.poll() is not None:
                    raise RuntimeError(f"the service exited with {service.process.returncode}:\n{service.log_tail()}")
        finally:
            self.stopping.set()
            await asyncio.sleep(0.1)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await work.aclose()
            await streams.aclose()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def report(stats: Stats) -> None:
    print("\n== responses by kind (status: count), latency p50 / p99 in ms")
    for kind in sorted(stats.status):
        counts = ", ".join(f"{status}: {count}" for status, count in sorted(stats.status[kind].items()))
        latencies = stats.latency.get(kind, [])
        timing = (f"p50 {statistics.median(latencies) * 1000:.0f}  p99 {percentile(latencies, 0.99) * 1000:.0f}"
                  if latencies else "")
        print(f"  {kind:<20} {counts}")
        if timing:
            print(f"  {'':<20} {timing}")
    for note, count in sorted(stats.notes.items()):
        print(f"  {note}: {count}")


def verdicts(samples: list[dict[str, float]]) -> None:
    """The mean of the last third of the per-minute samples against the middle third's: more
    than 10% higher is `growing` (the first third, the warm-up, is left out)."""
    print("\n== verdicts (last third of the samples vs the middle third; > 10% = growing)")
    if len(samples) < 3:
        print("  too few samples for a verdict (run for 3 minutes or more)")
        return
    third = len(samples) // 3
    middle, last = samples[third:len(samples) - third], samples[len(samples) - third:]
    for name in COLUMNS[1:]:
        before = statistics.fmean(row[name] for row in middle)
        after = statistics.fmean(row[name] for row in last)
        growth = (after - before) / before if before else (0.0 if after == before else float("inf"))
        verdict = "growing" if growth > 0.10 else "flat"
        print(f"  {name:<16} {verdict:<8} {before:10.1f} -> {after:10.1f}  ({growth:+.1%})")


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--streams", type=int, default=500, help="idle event streams held open")
    parser.add_argument("--stream-cap", type=int, default=1000, help="GAZER_MAX_EVENT_STREAMS_PER_CLIENT for the run")
    parser.add_argument("--predict-clients", type=int, default=2)
    parser.add_argument("--explain-clients", type=int, default=1)
    parser.add_argument("--slowloris", type=int, default=4, help="slowloris sockets")
    parser.add_argument("--slowloris-interval", type=float, default=5.0, help="seconds between header bytes")
    parser.add_argument("--keep", action="store_true", help="keep the data dir and log")
    args = parser.parse_args()

    started = time.time()
    # Ctrl-C and SIGTERM alike end the run through the finally blocks below
    signal.signal(signal.SIGTERM, _interrupt)
    service = Service(args.stream_cap)
    parked = None
    print(f"soak: {args.minutes:g} min; service log {service.log_path}", flush=True)
    try:
        service.wait_ready()
        redis_url = service.redis_url()
        redis_client = redis.Redis.from_url(redis_url, socket_timeout=10)
        parked = JobStore.from_url(redis_url, 60).create(
            "activation-maximization", {"model": MODEL, "target": {"class": 1}, "steps": 10, "size": 64})["id"]
        samples = [sample(service, redis_client, 0.0)]
        print(f"ready in {time.time() - started:.0f} s; parked job {parked} holds the idle streams\n")
        print_row(samples[0], header=True)
        load = Load(service, args, parked)
        try:
            asyncio.run(load.run(samples, redis_client))
        finally:
            report(load.stats)
        samples.append(sample(service, redis_client, args.minutes * 60))
        print("\n== final sample (load stopped)")
        print_row(samples[-1], header=True)
        verdicts(samples[1:-1])  # the samples under load
        print(f"  (idle streams open at the end of the load: {samples[-2].get('streams_open', 0):.0f} "
              f"of {args.streams}; the per-client default cap is 100)")
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the service", flush=True)
    finally:
        if parked is not None and service.process.poll() is None:
            try:
                httpx.delete(f"{service.url}/v1/jobs/{parked}", timeout=10)
            except httpx.HTTPError:
                pass
        service.stop()
        if args.keep:
            print(f"kept {service.scratch}")
        else:
            shutil.rmtree(service.scratch, ignore_errors=True)
        print(f"(took {time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
