"""`make run` (`python -m service.launch`) stops at once, with the reason, where the API could not
start (its port taken, an open service on a public HOST), instead of starting it again forever;
a setting out of its range stops the API, the worker and `make run` with a line naming it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from tests.live_service import ROOT


def launch(tmp_path, module: str = "service.launch", **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "GAZER_DATA_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    for name in ("GAZER_REDIS_URL", "GAZER_API_KEYS", "GAZER_ALLOW_OPEN"):
        environment.pop(name, None)
    return subprocess.run([sys.executable, "-m", module], cwd=ROOT, env={**environment, **env}, capture_output=True,
                          text=True, timeout=60)


def test_a_taken_port_stops_make_run_before_anything_starts(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        ended = launch(tmp_path, PORT=str(port))
    assert ended.returncode == 2, ended.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in ended.stderr and f"PORT={port + 1} make run" in ended.stderr
    assert not (tmp_path / "redis").exists()  # no Redis, worker or API was started


def test_an_open_service_on_a_public_host_stops_make_run(tmp_path):
    ended = launch(tmp_path, HOST="0.0.0.0", PORT="0")
    assert ended.returncode == 2 and "GAZER_API_KEYS" in ended.stderr, ended.stderr
    assert not (tmp_path / "redis").exists()


def test_a_setting_out_of_range_is_named_in_one_line():
    """A negative lease made a healthy worker's job read as lost after 6 s; a zero pixel limit
    refused every image; out-of-range ones printed a 17-line traceback naming `max_batch`."""
    for module in ("service", "worker", "service.launch"):
        ended = launch(ROOT / "var-never-made", module, GAZER_JOB_LEASE_SECONDS="-5", GAZER_REDIS_URL="redis://x:1")
        assert ended.returncode == 2, ended.stderr
        assert ended.stderr.strip() == "GAZER_JOB_LEASE_SECONDS=-5: Input should be greater than 0", ended.stderr
    ended = launch(ROOT / "var-never-made", "worker")
    assert ended.returncode == 2 and ended.stderr.strip() == "GAZER_REDIS_URL: must be set", ended.stderr
    with socket.create_server(("0.0.0.0", 0)) as holder:  # a taken metrics port was a traceback
        port = holder.getsockname()[1]
        ended = launch(ROOT / "var-never-made", "worker", GAZER_REDIS_URL="redis://127.0.0.1:1",
                       GAZER_WORKER_METRICS_PORT=str(port))
    assert ended.returncode == 2 and ended.stderr.strip().startswith(
        f"GAZER_WORKER_METRICS_PORT={port}: cannot serve metrics there"), ended.stderr
