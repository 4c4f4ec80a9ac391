"""`python -m service`: serve the API with uvicorn on $HOST:$PORT (default 127.0.0.1:8000);
GAZER_ACCESS_LOG=0 turns the per-request access log off. Logs are JSON lines (infra.logs).
Without API keys it listens on loopback only, unless GAZER_ALLOW_OPEN=1 says otherwise.

GAZER_API_PROCESSES=N serves the port from N uvicorn processes (uvicorn's supervisor restarts one
that dies). They share one Redis: GAZER_REDIS_URL, else an embedded redis-server started here, once,
not by each; and one PROMETHEUS_MULTIPROC_DIR (a fresh folder unless given), so that /metrics
answered by any of them counts the requests of all."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Iterator

import uvicorn
from uvicorn.main import STARTUP_FAILURE

from core.storage import Storage
from infra.embedded_redis import EmbeddedRedis
from infra.logs import configure_logging, logging_config
from infra.settings import EXIT_REFUSED
from service.settings import Settings
from service.start_checks import listening_port, refusal, unknown_default_model, unknown_variables

log = logging.getLogger("gazer.service")


@contextmanager
def shared_by_processes(settings: Settings) -> Iterator[None]:
    """What N API processes must share, set in the environment they inherit: one Redis, and one
    folder for their metrics files: a fresh one (prometheus-client wants it empty at start), removed
    at the end, unless PROMETHEUS_MULTIPROC_DIR names one."""
    with ExitStack() as stack:
        if not settings.redis_url:
            embedded = stack.enter_context(EmbeddedRedis(Storage(settings.data_dir).redis))
            os.environ["GAZER_REDIS_URL"] = embedded.url
            log.info("embedded redis-server at %s for %d API processes", embedded.url, settings.api_processes)
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            folder = tempfile.mkdtemp(prefix="gazer-metrics-")
            stack.callback(shutil.rmtree, folder, ignore_errors=True)
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
        yield


def graceful_seconds(settings: Settings) -> float:
    """How long a stopping API waits for its requests to be answered: most of GAZER_STOP_SECONDS,
    leaving time to shut down what it runs."""
    return max(settings.stop_seconds - 5.0, settings.stop_seconds / 2)


@contextmanager
def refused_if_it_cannot_start() -> Iterator[None]:
    """uvicorn's exit when the app's start fails (its lifespan: a GAZER_REDIS_URL without a
    scheme) or its port cannot be taken, as EXIT_REFUSED: `make run` started it again for ever."""
    try:
        yield
    except SystemExit as ended:
        if ended.code != STARTUP_FAILURE:
            raise
        print("the API could not start: the lines above say why", file=sys.stderr)
        sys.exit(EXIT_REFUSED)


def main() -> None:
    configure_logging()  # uvicorn applies the same config again; this covers what comes before it
    for line in unknown_variables(dict(os.environ)):
        log.warning(line)
    settings = Settings.from_environment()
    host = os.environ.get("HOST", "127.0.0.1")
    if (why := refusal(settings, host) or unknown_default_model(settings)) is not None:
        print(why, file=sys.stderr)
        sys.exit(EXIT_REFUSED)
    processes = settings.api_processes
    with shared_by_processes(settings) if processes > 1 else nullcontext(), refused_if_it_cannot_start():
        uvicorn.run("service.app:create_app", factory=True, host=host, workers=processes,
                    port=listening_port(), log_level="info", log_config=logging_config(),
                    access_log=os.environ.get("GAZER_ACCESS_LOG", "1") != "0",
                    timeout_keep_alive=5,  # GAZER_MAX_CONNECTIONS: the protocol's, answered by the app
                    ws="none",  # no WebSocket routes; an upgrade would move a connection off the protocol that counts it
                    proxy_headers=bool(settings.trusted_proxies), forwarded_allow_ips=settings.trusted_proxies or None,
                    # by name: worker processes import it (a class made in a function cannot be sent)
                    http="service.http_protocol:FROM_SETTINGS",
                    # a process loading its models answers the supervisor's pings late
                    timeout_worker_healthcheck=60,
                    # what is still running then is cancelled, so that the API stops within
                    # GAZER_STOP_SECONDS, before `make run` kills it and what it answers
                    timeout_graceful_shutdown=graceful_seconds(settings))


if __name__ == "__main__":
    main()
