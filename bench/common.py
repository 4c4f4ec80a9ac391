"""Shared benchmark helpers: a real server in a subprocess, a lean HTTP client, interleaved timing.

This machine is shared and noisy, so every comparison runs its contenders in alternating
rounds within one process run and reports medians and their ratio.
"""

from __future__ import annotations

import atexit
import functools
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from core.models.registry import LoadedModel, ModelRegistry
from core.storage import Storage
from infra.processes import stop_process


def scratch_dir(prefix: str = "gazer-bench-") -> Path:
    """A temporary folder, removed when this process ends: benchmarks export models of tens of MB."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


@functools.cache
def _registry() -> ModelRegistry:
    return ModelRegistry(Storage(scratch_dir()), max_loaded=8)


def served_model(model_id: str = "efficientnet_lite0") -> LoadedModel:
    """A model as the service loads it (ONNX session included), exported once per bench run."""
    return _registry().get(model_id)


def run_timed(main: Callable[[], None]) -> None:
    started = time.time()
    main()
    print(f"\n(took {time.time() - started:.0f} s)")


def ignore_progress(*args: object, **kwargs: object) -> None:
    """A job body's progress callback for runs nobody watches."""


class Timings(dict):
    """Median milliseconds per call of each contender, plus per-round medians for ratios."""

    def __init__(self, rounds: dict[str, list[float]]) -> None:
        super().__init__({name: statistics.median(values) for name, values in rounds.items()})
        self.rounds = rounds

    def ratio(self, numerator: str, denominator: str) -> float:
        """Median over rounds of the two contenders' ratio in that round: paired, so a slow
        spell of the machine affects both sides of each ratio alike."""
        return statistics.median(a / b for a, b in zip(self.rounds[numerator], self.rounds[denominator]))


def interleaved(contenders: dict[str, Callable[[], object]], rounds: int = 7, per_round: int = 10,
                warmup: int = 3) -> Timings:
    """Each contender's median milliseconds per call, measured in alternating rounds."""
    medians: dict[str, list[float]] = {name: [] for name in contenders}
    for function in contenders.values():
        for _ in range(warmup):
            function()
    for _ in range(rounds):
        for name, function in contenders.items():
            samples = []
            for _ in range(per_round):
                started = time.perf_counter()
                function()
                samples.append(time.perf_counter() - started)
            medians[name].append(statistics.median(samples) * 1000)
    return Timings(medians)


class Client:
    """A keep-alive HTTP/1.1 client with the request body built once, so that the client's
    own cost is as small as it can be."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

    def post(self, path: str, body: bytes, content_type: str) -> bytes:
        try:
            self.connection.request("POST", path, body=body, headers={"Content-Type": content_type})
            response = self.connection.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # the server closed a keep-alive connection left idle (uvicorn: after 5 s): reconnect once
            self.connection.close()
            self.connection.request("POST", path, body=body, headers={"Content-Type": content_type})
            response = self.connection.getresponse()
        payload = response.read()
        if not 200 <= response.status < 300:
            raise RuntimeError(f"{path}: {response.status} {payload[:300]!r}")
        return payload

    def get_json(self, path: str) -> tuple[int, dict]:
        self.connection.request("GET", path)
        response = self.connection.getresponse()
        return response.status, json.loads(response.read())


@contextmanager
def running_server(port: int = 8765, checkout: Path | None = None) -> Iterator[Client]:
    """`python -m service` in a subprocess (same environment, so LD_PRELOAD carries over), from
    `checkout` (another worktree of the project) when given, else from this one."""
    with running_server_process(port, checkout) as (port, _):
        yield Client(port)


@contextmanager
def running_server_process(port: int = 8765, checkout: Path | None = None,
                           **settings: str) -> Iterator[tuple[int, list[int]]]:
    """As running_server, yielding the port and the server's pid; `settings`: GAZER_* variables
    (lower-case names, as Settings spells them)."""
    data_dir = scratch_dir()
    env = {**os.environ, "PORT": str(port), "GAZER_DATA_DIR": str(data_dir),
           **{f"GAZER_{name.upper()}": str(value) for name, value in settings.items()}}
    if checkout is not None:
        env["PYTHONPATH"] = str(checkout)
    log = open(data_dir / "server.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "service"], env=env, cwd=checkout, stdout=log, stderr=log)
    try:
        deadline = time.time() + 180
        while True:
            try:
                client = Client(port)
                if client.get_json("/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline or process.poll() is not None:
                raise RuntimeError("the server did not become ready")
            time.sleep(0.5)
        client.connection.close()
        yield port, [process.pid]
    except BaseException:  # the folder, log included, goes when this process ends: show why here
        tail = (data_dir / "server.log").read_text(errors="replace")[-3000:]
        print(f"the end of the server's log:\n{tail}", file=sys.stderr)
        raise
    finally:
        stop_process(process)
        log.close()


def report(title: str, rows: list[tuple[str, str]]) -> None:
    print(f"\n== {title}")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value}")
