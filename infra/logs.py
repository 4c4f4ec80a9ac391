"""Logs as one JSON object per line, carrying the id of the request (or job) being served."""

from __future__ import annotations

import json
import logging
import logging.config
import re
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
job_id: ContextVar[str | None] = ContextVar("job_id", default=None)

# uvicorn's access log passes these as its record's args.
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")
# a key sent in a query string (the service reads keys from headers only) is not logged
_SECRET_PARAMETER = re.compile(r"([?&][^=&]*(?:key|token|auth|secret|password)[^=&]*=)[^&]*", re.IGNORECASE)


def _redacted(path: object) -> object:
    return _SECRET_PARAMETER.sub(r"\1[redacted]", path) if isinstance(path, str) and "?" in path else path


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, version, status = record.args
            record.args = (client, method, _redacted(path), version, status)
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            entry.update(zip(_ACCESS_FIELDS, record.args))
        for name, var in (("request_id", request_id), ("job_id", job_id)):
            if (value := var.get()) is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class ApiProcessDeaths(logging.Filter):
    """uvicorn's supervisor tells at INFO that an API process died (it starts another): a crash,
    told here at WARNING, where alerts on the log look."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING and re.fullmatch(r"Child process \[\d+\] died", record.getMessage()):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


# what probes and Prometheus ask every few seconds: their answers in the access log only when they fail
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class QuietProbes(logging.Filter):
    """Drops uvicorn's access line for a successful GET or HEAD of QUIET_PATHS: a probe every
    few seconds and a scrape, per process, drowned the requests' lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if len(args) == 5:  # uvicorn's: client, method, path (with its query), version, status
            _, method, path, _, status = args
            probe = method in ("GET", "HEAD") and str(path).split("?")[0] in QUIET_PATHS
            return not (probe and 200 <= int(status) < 300)
        return True


def logging_config(level: str = "INFO") -> dict[str, Any]:
    """A dictConfig: the root logger and uvicorn's own loggers, all through JsonFormatter
    to stderr (uvicorn.run takes it as `log_config`)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "filters": {"api_process_deaths": {"()": ApiProcessDeaths}, "quiet_probes": {"()": QuietProbes}},
        "handlers": {"json": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["json"], "level": level},
        "loggers": {
            "uvicorn": {"handlers": ["json"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level, "filters": ["api_process_deaths"]},
            "uvicorn.access": {"handlers": ["json"], "level": level, "propagate": False, "filters": ["quiet_probes"]},
        },
    }


def configure_logging(level: str = "INFO") -> None:
    """Also routes Python warnings through the log, so they become JSON lines too."""
    logging.config.dictConfig(logging_config(level))
    logging.captureWarnings(True)

