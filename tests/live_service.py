"""`python -m service.launch` (what `make run` starts: embedded Redis, one worker, the API) as a
real child process on a free port, for tests that talk to it over HTTP: the client, the CLI and
the browser."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from infra.processes import stop_process

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LiveService:
    def __init__(self, data_dir: Path, port: int | None = None, **settings: object) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / "service.log"
        env = {**os.environ, "PORT": str(self.port), "GAZER_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)}
        env.pop("GAZER_REDIS_URL", None)
        env.update({f"GAZER_{key.upper()}": str(value) for key, value in settings.items()})
        # a process group of its own, as a terminal gives `make run`: what a test sends the group
        # (a Ctrl-C's SIGINT) reaches the service alone
        self.process = subprocess.Popen([sys.executable, "-m", "service.launch"], cwd=ROOT, env=env,
                                        stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 180) -> "LiveService":
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.process.poll() is None, self.log()
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200 and "ready." in self.log():
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"service not ready after {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        stop_process(self.process)

    def __enter__(self) -> "LiveService":
        return self.wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()
