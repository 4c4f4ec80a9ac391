"""`python -m service`: serve the API with uvicorn on $HOST:$PORT (default 127.0.0.1:8000);
GAZER_ACCESS_LOG=0 turns the per-request access log off. Logs are JSON lines (infra.logs).
Without API keys it listens on loopback only, unless GAZER_ALLOW_OPEN=1 says otherwise."""

from __future__ import annotations

import ipaddress
import os
import sys

import uvicorn

from infra.logs import configure_logging, logging_config
from service.http_protocol import with_header_deadline
from service.settings import Settings


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def refusal(settings: Settings, host: str) -> str | None:
    """Why the service may not start on `host`, or None."""
    if settings.api_keys is None and not settings.allow_open and not is_loopback(host):
        return (f"refusing to serve {host} without API keys: anyone who reaches the port could delete data and "
                f"publish models. Set GAZER_API_KEYS (create one with `gazer keys create --scopes admin`), "
                f"or GAZER_ALLOW_OPEN=1 to run open anyway.")
    return None


def main() -> None:
    configure_logging()  # uvicorn applies the same config again; this covers what comes before it
    settings = Settings()
    host = os.environ.get("HOST", "127.0.0.1")
    if (why := refusal(settings, host)) is not None:
        print(why, file=sys.stderr)
        sys.exit(2)
    uvicorn.run("service.app:create_app", factory=True, host=host,
                port=int(os.environ.get("PORT", "8000")), log_level="info", log_config=logging_config(),
                access_log=os.environ.get("GAZER_ACCESS_LOG", "1") != "0",
                limit_concurrency=settings.max_connections, timeout_keep_alive=5,
                http=with_header_deadline(settings.header_seconds))


if __name__ == "__main__":
    main()
