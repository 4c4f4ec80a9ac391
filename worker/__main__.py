"""`python -m worker`: one worker process, running one job at a time (run one per GPU, each
with its own CUDA_VISIBLE_DEVICES). CUDA is first touched inside this process, by a job."""

from __future__ import annotations

import logging

from worker.app import create_celery
from worker.settings import WorkerSettings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_celery(WorkerSettings())
    app.worker_main(["worker", "--pool=solo", "--concurrency=1", "--loglevel=INFO", "--without-gossip",
                     "--without-mingle", "--without-heartbeat"])


if __name__ == "__main__":
    main()
