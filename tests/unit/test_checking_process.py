"""checking_process: an upload's check forked from a server that has imported torch once. This
module is itself the checking child's module: `main` below is what child_answer runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.errors import InvalidRequest
from core.models import checking_process
from core.models.checking_process import child_answer


def main(argv: list[str], receive) -> None:
    what = argv[0]
    if what == "echo":
        received = receive()
        print(json.dumps({"environment": sorted(os.environ), "cwd": os.getcwd(), "bytes": len(received),
                          "tail": received[-4:].decode(), "torch_imported": "torch" in sys.modules}), flush=True)
    elif what == "fail":
        raise ValueError("a check's own bug")
    elif what == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif what == "hang":
        time.sleep(60)


def answer(tmp_path: Path, what: str, stdin: bytes = b"", seconds: float = 30) -> dict:
    folder, cwd = tmp_path / "output", tmp_path / "cwd"
    folder.mkdir(exist_ok=True)
    cwd.mkdir(exist_ok=True)
    return child_answer([__name__, what], folder, cwd, seconds, "weights", "the test check", stdin=stdin,
                        too_long="too long")


def test_the_child_gets_its_input_its_folder_and_no_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("GAZER_API_KEYS", "secret")
    weights = b"w" * (64 * 2**20) + b"tail"  # past any pipe's buffer
    got = answer(tmp_path, "echo", weights)
    assert got["bytes"] == len(weights) and got["tail"] == "tail"
    assert got["cwd"] == str(tmp_path / "cwd")
    assert set(got["environment"]) <= {"PATH", "PYTHONPATH", "LD_PRELOAD", "LD_LIBRARY_PATH"}, got["environment"]
    assert got["torch_imported"]  # imported by the server, before the fork


def test_a_check_that_fails_is_a_server_error_with_its_traceback(tmp_path):
    with pytest.raises(RuntimeError, match="a check's own bug"):
        answer(tmp_path, "fail")


def test_a_check_stopped_by_a_signal_is_the_uploads_fault(tmp_path):
    with pytest.raises(InvalidRequest, match="stopped on the model .SIGSEGV."):
        answer(tmp_path, "crash")


def test_a_check_past_its_time_is_killed(tmp_path):
    started = time.perf_counter()
    with pytest.raises(InvalidRequest, match="too long"):
        answer(tmp_path, "hang", seconds=0.5)
    assert time.perf_counter() - started < 10


def test_the_server_stops_with_the_process_that_started_it():
    """A server left behind would hold torch's memory for nothing, and one per API process."""
    script = ("import os; from core.models import checking_process; checking_process.start_server(); "
              "print(open(f'/proc/{os.getpid()}/task/{os.getpid()}/children').read())")
    started = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                             cwd=Path(__file__).resolve().parents[2])
    assert started.returncode == 0, started.stderr
    children = [int(pid) for pid in started.stdout.split()]
    assert children
    deadline = time.monotonic() + 20
    while any(Path(f"/proc/{pid}").exists() for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)


def servers() -> list[int]:
    """This process's forkservers."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if parent == os.getpid() and b"multiprocessing.forkserver" in command:
            found.append(int(stat.parent.name))
    return found


def test_the_server_stops_when_idle_and_starts_again_with_the_next_check(tmp_path, monkeypatch):
    """It holds about 400 MB: an API process that checked one upload kept that for good."""
    monkeypatch.setattr(checking_process, "IDLE_SECONDS", 1.0)
    answer(tmp_path, "echo")
    assert len(servers()) == 1
    deadline = time.monotonic() + 20
    while servers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert servers() == []
    assert answer(tmp_path, "echo", b"more")["tail"] == "more"
