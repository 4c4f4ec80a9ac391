"""An upload's check (weights_check, onnx_probe) in a process of its own, forked from a server
process (multiprocessing's forkserver) that has imported torch, torchvision, ONNX and ONNX
Runtime once: a new interpreter per check spent about 5 s of each upload importing them (more on
a busy machine). The server starts with a check and stops IDLE_SECONDS after the last one ends,
or with this process: it holds about 400 MB of its own. Each check's child runs in its own folder,
its os.environ emptied of all but PATH and the allocator's variables (nothing it runs
reads a secret from it; code that took the child over could still read this process's
environment through /proc, as it could from a child of this process), its output in files, and
is killed at its time limit; its module caps its own memory (onnx_probe.cap_memory)."""

from __future__ import annotations

import functools
import importlib
import json
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import threading
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Iterator

from core.errors import InvalidRequest

# What the checks import (their modules first): imported in the server, each check's child has them.
PRELOADED = ("core.models.weights_check", "core.models.onnx_probe", "core.models.registry", "core.models.upload",
             "torch", "torchvision", "torch.onnx", "onnx", "onnxruntime", "numpy", "safetensors.torch")
IDLE_SECONDS = 300.0
# What a child's os.environ keeps of the server's (this process's, when the server started).
_KEPT_VARIABLES = ("PATH", "LD_PRELOAD", "LD_LIBRARY_PATH")
_STDERR_KEPT = 2000


@functools.cache
def _context() -> multiprocessing.context.ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOADED))
    return context


class _ServerUse:
    """Counts the checks running, and stops the server once none has run for IDLE_SECONDS: its
    children report their exit through it, so it stops only with none running."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._idle: threading.Timer | None = None

    @contextmanager
    def held(self) -> Iterator[multiprocessing.context.ForkServerContext]:
        with self._lock:
            self._running += 1
            if self._idle is not None:
                self._idle.cancel()
                self._idle = None
        try:
            yield _context()  # a server stopped for idleness starts again with the next child
        finally:
            with self._lock:
                self._running -= 1
                if self._running == 0:
                    self._idle = threading.Timer(IDLE_SECONDS, self._stop_if_idle)
                    self._idle.daemon = True
                    self._idle.start()

    def _stop_if_idle(self) -> None:
        with self._lock:
            if self._running == 0 and self._idle is threading.current_thread():
                self._idle = None
                multiprocessing.forkserver._forkserver._stop()  # what multiprocessing's own tests use


_SERVER = _ServerUse()


def start_server() -> None:
    """Starts the server now, where the first check would start it, and returns once it has
    imported PRELOADED (and forked a child that does nothing)."""
    with _SERVER.held() as context:
        child = context.Process(target=int, daemon=True)
        child.start()
        child.join()
        child.close()


def _child(module: str, argv: list[str], cwd: str, out: str, err: str, stdin: Connection) -> None:
    for descriptor, path in ((1, out), (2, err)):
        opened = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.dup2(opened, descriptor)
        os.close(opened)
    os.chdir(cwd)
    kept = {name: os.environ[name] for name in _KEPT_VARIABLES if name in os.environ}
    os.environ.clear()
    os.environ.update(kept)
    importlib.import_module(module).main(argv, stdin.recv_bytes)


def _send(connection: Connection, data: bytes) -> None:
    try:
        connection.send_bytes(data)
    except OSError:  # the child ended (or was killed) before it read it all: its exit code says why
        pass
    finally:
        connection.close()


def child_answer(argv: list[str], folder: Path, cwd: Path, seconds: float, field: str, check: str, *,
                 too_long: str, stdin: bytes = b"", most: int = 10_000) -> dict:
    """The JSON line a checking child prints last, of the first `most` bytes it prints (-1: all),
    its output kept in `folder`: ARGV[0]'s module's `main(ARGV[1:], receive)` run in `cwd`,
    `receive()` giving `stdin`. InvalidRequest `too_long` once it has run for `seconds` (the
    server's start not counted), or where a signal stopped it; {"error": "memory"} where it was
    killed (the OOM killer)."""
    (folder / "out").touch()
    (folder / "err").touch()
    with _SERVER.held() as context:
        receiving, sending = context.Pipe(duplex=False)
        child = context.Process(target=_child, args=(argv[0], argv[1:], str(cwd), str(folder / "out"),
                                                     str(folder / "err"), receiving), daemon=True)
        child.start()  # returns once the server (started by the first check) has forked the child
        receiving.close()
        sender = threading.Thread(target=_send, args=(sending, stdin), daemon=True)
        sender.start()
        child.join(seconds)
        timed_out = child.exitcode is None
        if timed_out:
            child.kill()
            child.join()
        sender.join()
    returncode = child.exitcode
    child.close()
    if timed_out:
        raise InvalidRequest(too_long, field=field)
    with open(folder / "out", "rb") as out, open(folder / "err", "rb") as err:
        printed = out.read(most).decode(errors="replace").strip().splitlines()
        err.seek(max(0, err.seek(0, os.SEEK_END) - _STDERR_KEPT))
        errors = err.read().decode(errors="replace")
    if returncode < 0 and returncode != -signal.SIGKILL:
        raise InvalidRequest(f"{check} stopped on the model ({signal.Signals(-returncode).name})", field=field)
    if returncode > 0 or (returncode == 0 and not printed):
        raise RuntimeError(f"{check} itself failed (exit {returncode}): {errors}")
    return json.loads(printed[-1]) if returncode == 0 else {"error": "memory"}
