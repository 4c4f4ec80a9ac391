"""`make run`: the whole service in one command: Redis (embedded unless GAZER_REDIS_URL is
set), one Celery worker and the API, supervised: a child that dies (killed for memory, say) is
started again with backoff while the others keep serving. Ctrl-C (or SIGTERM) stops them
together, each with what it started, killed past GAZER_STOP_SECONDS or at a second Ctrl-C.
What would stop the API at every start (its port taken, an unreadable key file, an open service
on a public HOST, a data folder it cannot write or that another embedded Redis runs on) stops
`make run` before anything starts, with the reason; a child that exits saying it cannot start
as configured (exit 2: the worker's metrics port taken, say) stops it after. Killed outright,
it takes its children with it (infra.processes.ended_with_this_process). GAZER_API_PROCESSES=N:
the API child serves the port from N processes (service/__main__.py), all on the Redis started
here, which their environment names."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from core.storage import Storage
from infra.embedded_redis import EmbeddedRedis, FolderInUse
from infra.logs import configure_logging
from infra.processes import ended_with_this_process
from infra.settings import EXIT_REFUSED
from service.settings import Settings
from service.start_checks import listening_port, port_taken, refusal

log = logging.getLogger("gazer.launch")

FIRST_DELAY_SECONDS = 1.0
LONGEST_DELAY_SECONDS = 30.0
STABLE_SECONDS = 60.0  # a child up this long starts its backoff afresh when it dies
# A signal this soon after the first is the same stop delivered twice (GNU make passes on what its
# process group got, which the launcher got too), not a second Ctrl-C.
SAME_STOP_SECONDS = 1.0


@dataclass
class Child:
    """A `python -m MODULE` child, started again after it dies: 1 s later, then 2, 4, ... 30."""

    module: str
    env: dict[str, str]
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    deaths: int = 0
    restart_at: float | None = None
    restarts: int = 0
    refused: bool = False  # exited at its first start saying it cannot start as configured
    orphans: bool = False  # its process group outlived it, when it last died


    def start(self) -> None:
        # a process group of its own: stopping it stops what it started (uvicorn's API processes);
        # and a SIGTERM if the launcher is killed, which cannot stop it then
        self.process = subprocess.Popen([sys.executable, "-m", self.module], env=self.env, start_new_session=True,
                                        preexec_fn=ended_with_this_process())
        self.started_at = time.monotonic()
        self.restart_at = None

    def watch(self, now: float) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            if now - self.started_at > STABLE_SECONDS:
                self.deaths = 0
            return
        if self.process.returncode == EXIT_REFUSED and not self.restarts:
            self.refused = True  # started again, it would fail the same way, for ever
            return
        if self.restart_at is None:
            # what it started outlives it (uvicorn's API processes, on its port)
            self.orphans = self._signal_group(signal.SIGTERM)
            self.deaths += 1
            delay = min(LONGEST_DELAY_SECONDS, FIRST_DELAY_SECONDS * 2 ** (self.deaths - 1))
            self.restart_at = now + delay
            log.error("%s (pid %d) exited with %s; starting it again in %.0f s", self.module, self.process.pid,
                      self.process.returncode, delay)
        elif now >= self.restart_at:
            if self.orphans:  # else its group is gone, and its number may be another's by now
                self._signal_group(signal.SIGKILL)
            self.start()
            self.restarts += 1
            log.info("%s started again (pid %d)", self.module, self.process.pid)

    def _signal_group(self, signal_number: int) -> bool:
        """`signal_number` to the process group the child led (it is its pid); whether any of it was left."""
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signal_number)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def kill(self) -> None:
        """It and what it started, now."""
        if self.process is not None:
            self._signal_group(signal.SIGKILL)

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def wait(self, deadline: float) -> None:
        """Waits for it to exit until `deadline` (time.monotonic), then kills its group; either
        way, what it started and left behind goes too."""
        if self.process is None:
            return
        try:
            self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s (pid %d) did not stop in time (GAZER_STOP_SECONDS); killed", self.module, self.process.pid)
        self._signal_group(signal.SIGKILL)
        self.process.wait()


def main() -> None:
    configure_logging()
    settings = Settings.from_environment()
    host, port = os.environ.get("HOST", "127.0.0.1"), listening_port()
    if (why := refusal(settings, host) or port_taken(host, port)) is not None:
        print(why, file=sys.stderr)
        sys.exit(EXIT_REFUSED)
    env = dict(os.environ)
    embedded = None
    if not settings.redis_url:
        try:
            embedded = EmbeddedRedis(Storage(settings.data_dir).redis).start()
        except FolderInUse as taken:  # since `refusal` looked
            print(taken, file=sys.stderr)
            sys.exit(EXIT_REFUSED)
        env["GAZER_REDIS_URL"] = embedded.url
        log.info("embedded redis-server at %s (data in %s)", embedded.url, embedded.data_dir)
    children = [Child("worker", env), Child("service", env)]
    for child in children:
        child.start()
    stopping: int | None = None  # the signal that asked
    asked_at = 0.0

    def stop(signal_number: int, _: object) -> None:
        nonlocal stopping, asked_at
        if stopping is None:
            stopping, asked_at = signal_number, time.monotonic()
        elif time.monotonic() - asked_at >= SAME_STOP_SECONDS:  # asked twice: the wait for them is over
            log.warning("%s received again: killing them now", signal.Signals(signal_number).name)
            for child in children:
                child.kill()

    for name in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: its terminal closed
        signal.signal(name, stop)
    try:
        while stopping is None:
            now = time.monotonic()
            if embedded is not None and embedded.process is not None and embedded.process.poll() is not None:
                log.error("the embedded redis-server exited with %s; starting it again", embedded.process.returncode)
                embedded.start()  # the same port and data folder (AOF), so clients reconnect
            for child in children:
                child.watch(now)
            if refused := [child.module for child in children if child.refused]:
                log.error("%s cannot start as configured (its line above says why); stopping", refused[0])
                break
            time.sleep(0.25)
        if stopping is not None:
            log.info("%s received: stopping (once more to kill them now)", signal.Signals(stopping).name)
    finally:
        for child in children:  # all get SIGTERM at once, then are waited for together
            child.terminate()
        deadline = time.monotonic() + settings.stop_seconds
        for child in children:
            child.wait(deadline)
        if embedded is not None:
            embedded.stop()
    if any(child.refused for child in children):
        sys.exit(EXIT_REFUSED)


if __name__ == "__main__":
    main()
