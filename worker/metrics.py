"""The worker's own job metrics, served on GAZER_WORKER_METRICS_PORT when it is set."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

JOB_SECONDS_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400, float("inf"))


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.duration = Histogram("gazer_worker_job_duration_seconds", "Job run time by type and outcome",
                                  ["type", "outcome"], buckets=JOB_SECONDS_BUCKETS, registry=registry)
        self.running = Gauge("gazer_worker_jobs_running", "Jobs this worker is running", registry=registry)
        self.finished = Counter("gazer_worker_jobs_finished", "Jobs this worker finished, by type and state",
                                ["type", "state"], registry=registry)

    def record(self, job_type: str, state: str, seconds: float) -> None:
        self.duration.labels(job_type, state).observe(seconds)
        self.finished.labels(job_type, state).inc()

    def serve(self, port: int, host: str) -> None:
        start_http_server(port, addr=host, registry=self.registry)
