"""`python -m service`: serve the API with uvicorn on $HOST:$PORT (default 127.0.0.1:8000);
GAZER_ACCESS_LOG=0 turns the per-request access log off."""

from __future__ import annotations

import logging
import os

import uvicorn


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run("service.app:create_app", factory=True, host=os.environ.get("HOST", "127.0.0.1"),
                port=int(os.environ.get("PORT", "8000")), log_level="info",
                access_log=os.environ.get("GAZER_ACCESS_LOG", "1") != "0")


if __name__ == "__main__":
    main()
