"""`make run`: the whole service in one command: Redis (embedded unless GAZER_REDIS_URL is
set), one Celery worker and the API, stopped together on Ctrl-C."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

from infra.embedded_redis import EmbeddedRedis
from infra.logs import configure_logging
from infra.processes import stop_process
from core.storage import Storage
from service.settings import Settings

log = logging.getLogger("gazer.launch")


def main() -> None:
    configure_logging()
    settings = Settings()
    env = dict(os.environ)
    embedded = None
    if not settings.redis_url:
        embedded = EmbeddedRedis(Storage(settings.data_dir).redis).start()
        env["GAZER_REDIS_URL"] = embedded.url
        log.info("embedded redis-server at %s (data in %s)", embedded.url, embedded.data_dir)
    children = [subprocess.Popen([sys.executable, "-m", "worker"], env=env),
                subprocess.Popen([sys.executable, "-m", "service"], env=env)]
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping and all(child.poll() is None for child in children):
            time.sleep(0.5)
    finally:
        for child in children:  # both get SIGTERM at once, then each is waited for
            if child.poll() is None:
                child.terminate()
        for child in children:
            stop_process(child)
        if embedded is not None:
            embedded.stop()
    sys.exit(max((child.returncode or 0) for child in children) if not stopping else 0)


if __name__ == "__main__":
    main()
