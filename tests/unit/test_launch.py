"""`make run` (`python -m service.launch`) stops at once, with the reason, where the API could not
start (its port taken, an open service on a public HOST), instead of starting it again forever;
a setting out of its range stops the API, the worker and `make run` with a line naming it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import psutil
import pytest

from infra.embedded_redis import EmbeddedRedis, FolderInUse
from tests.live_service import ROOT, LiveService


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


def test_infinite_numbers_and_an_empty_data_folder_are_refused_in_one_line(tmp_path):
    """GAZER_VISIBILITY_TIMEOUT=inf passed, then crashed the API and the worker at every start
    (OverflowError), each started again for ever; an empty GAZER_DATA_DIR put the data in the
    working folder, unsaid."""
    for name, value, said in (("GAZER_VISIBILITY_TIMEOUT", "inf", "Input should be a finite number"),
                              ("GAZER_JOB_LEASE_SECONDS", "nan", "Input should be a finite number"),
                              ("GAZER_DATA_DIR", "", "must name a folder (unset, it is var)")):
        for module in ("worker", "service.launch"):
            ended = launch(tmp_path, module, GAZER_REDIS_URL="redis://x:1", **{name: value})
            assert ended.returncode == 2 and ended.stderr.strip() == f"{name}={value}: {said}", ended.stderr
    assert not (tmp_path / "redis").exists()


def test_an_api_whose_start_fails_stops_make_run(tmp_path):
    """A Redis URL without its scheme failed the API's start (uvicorn's exit 3), and `make run`
    started it again, for ever."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ended = launch(tmp_path, PORT=str(port), GAZER_REDIS_URL="localhost:6379")
    assert ended.returncode == 2, ended.stderr
    assert "the API could not start: the lines above say why" in ended.stderr
    assert "Redis URL must specify one of the following schemes" in ended.stderr + ended.stdout


def test_a_second_make_run_on_one_data_folder_is_refused_naming_the_first(tmp_path):
    """Two on one folder loaded one append-only file, and each one's worker ran the queued jobs
    of both: one job ran twice and published two versions."""
    with EmbeddedRedis(tmp_path / "redis") as first, socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        for module in ("service.launch", "service"):  # `python -m service` starts one of its own too
            ended = launch(tmp_path, module, PORT=str(port))
            assert ended.returncode == 2, ended.stderr
            assert ended.stderr.strip() == (
                f"another Gazer's embedded redis-server runs on {tmp_path / 'redis'} (pid {os.getpid()}, its "
                f"redis-server pid {first.process.pid}); a second would run its jobs again. Stop that one, or give "
                f"this one a folder of its own (GAZER_DATA_DIR)")
        assert first.process.poll() is None  # the first goes on


def test_the_folder_stays_locked_while_a_redis_server_left_behind_runs(tmp_path):
    """A launcher killed with -9 leaves its redis-server running on the folder: the lock is
    shared with it, so the next `make run` is refused until it is gone."""
    left = EmbeddedRedis(tmp_path).start()
    try:
        left._lock.close()  # as the launcher's death closes it
        with pytest.raises(FolderInUse, match=f"its redis-server pid {left.process.pid}"):
            EmbeddedRedis(tmp_path).start()
        left.process.kill()
        left.process.wait()
        with EmbeddedRedis(tmp_path) as next_one:
            assert next_one.process.poll() is None
    finally:
        left._lock = None
        left.stop()


def test_a_wrong_port_list_setting_or_data_folder_is_named_in_one_line(tmp_path):
    """Each was a traceback: int('abc'), an OverflowError from bind, pydantic-settings' SettingsError,
    a FileNotFoundError from making the folder."""
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    cases = [({"PORT": "abc"}, "PORT=abc: must be a port number, 0 to 65535"),
             ({"PORT": "99999"}, "PORT=99999: must be a port number, 0 to 65535"),
             ({"GAZER_EXPLAIN_OUTPUTS": "heatmap"},
              'GAZER_EXPLAIN_OUTPUTS=heatmap: must be JSON (a list as ["a", "b"])'),
             ({"GAZER_DATA_DIR": str(a_file / "data")},
              f"GAZER_DATA_DIR={a_file / 'data'}: cannot make it (Not a directory)"),
             # uvicorn took a name for one no peer has, ignoring the header unsaid; and * the client's own word
             ({"GAZER_TRUSTED_PROXIES": "10.0.0.0/8, localhost"},
              "GAZER_TRUSTED_PROXIES=10.0.0.0/8, localhost: 'localhost' is not an IP address or network (names are "
              "not resolved)"),
             ({"GAZER_TRUSTED_PROXIES": "*"},
              "GAZER_TRUSTED_PROXIES=*: * would take the address each client writes into X-Forwarded-For: name the "
              "proxies' addresses or networks (10.0.0.0/8, say)")]
    for env, line in cases:
        for module in ("service", "service.launch"):
            ended = launch(tmp_path, module, **env)
            assert ended.returncode == 2 and ended.stderr.strip() == line, (module, ended.stderr)


def test_a_worker_that_cannot_start_as_configured_stops_make_run_instead_of_starting_again_for_ever(tmp_path):
    """It was started again after 1, 2, 4, ... 30 s, for ever, while /readyz said ready."""
    with socket.create_server(("127.0.0.1", 0)) as holder, socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        taken = holder.getsockname()[1]
        ended = launch(tmp_path, PORT=str(port), GAZER_WORKER_METRICS_PORT=str(taken))
    assert ended.returncode == 2, ended.stderr[-2000:]
    assert f"GAZER_WORKER_METRICS_PORT={taken}: cannot serve metrics there, on 127.0.0.1" in ended.stderr
    assert "worker cannot start as configured" in ended.stderr and "starting it again" not in ended.stderr


def test_a_default_model_that_is_not_here_stops_the_api_and_make_run(tmp_path):
    """The API started, logged that it could not load it, and was never ready."""
    for module in ("service", "service.launch"):
        ended = launch(tmp_path, module, PORT="0", GAZER_DEFAULT_MODEL="efficientnet_lite9")
        assert ended.returncode == 2, ended.stderr[-2000:]
        assert ("GAZER_DEFAULT_MODEL=efficientnet_lite9: no model 'efficientnet_lite9'; known: efficientnet_lite0, "
                "efficientnet_lite1, efficientnet_lite2") in ended.stderr, ended.stderr[-2000:]


def test_a_misspelled_setting_is_named_with_the_closest_one():
    """A GAZER_ variable that nothing reads was ignored without a word."""
    ended = launch(ROOT / "var-never-made", "service", GAZER_MAX_BATCHES="4", gazer_nonsense="1",
                   GAZER_URL="http://elsewhere", GAZER_JOB_LEASE_SECONDS="-5")
    warned = [json.loads(line)["message"] for line in ended.stdout.splitlines() + ended.stderr.splitlines()
              if line.startswith("{")]
    assert warned == ["GAZER_MAX_BATCHES is not a Gazer setting; it is ignored (did you mean GAZER_MAX_BATCH?)",
                      "GAZER_NONSENSE is not a Gazer setting; it is ignored"], ended.stderr
    assert ended.returncode == 2  # and the settings are still checked after


def test_make_run_and_the_api_processes_supervisor_load_no_torch():
    """They only start and watch others; torch would cost each about 700 MB (the default model's
    start check once imported it through the registry)."""
    loaded = subprocess.run([sys.executable, "-c", "import sys, service.launch, service.__main__; "
                             "print(sorted({'torch', 'onnxruntime'} & set(sys.modules)))"],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                            timeout=60)
    assert loaded.returncode == 0 and loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr


def test_a_launcher_killed_with_sigkill_takes_the_api_the_worker_and_redis_with_it(tmp_path):
    """They ran on in sessions of their own, holding the port, the data folder and the jobs."""
    with LiveService(tmp_path) as service:
        launched = psutil.Process(service.process.pid).children(recursive=True)
        assert {"redis-server", "worker", "service"} <= {_role(child) for child in launched}
        service.process.kill()
        service.process.wait()
        _, alive = psutil.wait_procs(launched, timeout=60)
        for child in alive:
            child.kill()
        assert not alive, [child.cmdline() for child in alive]
    with LiveService(tmp_path, port=service.port):  # the port and the folder are free again
        pass


def _role(process: psutil.Process) -> str:
    command = process.cmdline()
    return command[2] if command[1:2] == ["-m"] else process.name()
