"""`python -m service`: serve the API with uvicorn on $HOST:$PORT (default 127.0.0.1:8000);
GAZER_ACCESS_LOG=0 turns the per-request access log off. Logs are JSON lines (infra.logs)."""

from __future__ import annotations

import os

import uvicorn

from infra.logs import configure_logging, logging_config


def main() -> None:
    configure_logging()  # uvicorn applies the same config again; this covers what comes before it
    uvicorn.run("service.app:create_app", factory=True, host=os.environ.get("HOST", "127.0.0.1"),
                port=int(os.environ.get("PORT", "8000")), log_level="info", log_config=logging_config(),
                access_log=os.environ.get("GAZER_ACCESS_LOG", "1") != "0")


if __name__ == "__main__":
    main()
