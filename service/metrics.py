"""The API's Prometheus metrics, on a registry of each app's own (tests build many apps in one
process). With PROMETHEUS_MULTIPROC_DIR set (several API processes), /metrics sums every
process's files, plus what is read at scrape time."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Callable, Iterator

import anyio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool

from core.storage import Storage
from infra.job_metrics import JobsCollector

log = logging.getLogger(__name__)
UNMATCHED_ROUTE = "unmatched"
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_IMAGES = (1, 2, 4, 8, 16, 32, 64)
MODELS_REFRESH_SECONDS = 5.0


class StorageCollector(Collector):
    """The data folder's free space, and the floor under which nothing new is stored."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (GaugeMetricFamily("gazer_storage_free_bytes", "Free space where the data folder is"),
                GaugeMetricFamily("gazer_storage_min_free_bytes", "Free space below which uploads, data sets and "
                                  "jobs are refused (GAZER_MIN_FREE_DISK_BYTES)"))

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        free, floor = self._families()
        free.add_metric([], self.storage.free_bytes())
        floor.add_metric([], self.storage.min_free_bytes)
        return iter((free, floor))


class Metrics:
    """`state`: the app's state, read for its model registry and job queue;
    `storage`: the data folder, for its free space."""

    def __init__(self, state: object, explanation_slots: int, storage: Storage) -> None:
        self.registry = registry = CollectorRegistry()
        self._observed: set[tuple[str, str]] = set()  # (model, stage) of each inference series
        self._observed_lock = threading.Lock()
        self.requests = Counter("gazer_http_requests", "HTTP requests by route template, method and status",
                                ["route", "method", "status"], registry=registry)
        self.latency = Histogram("gazer_http_request_duration_seconds", "HTTP request latency by route template",
                                 ["route", "method"], buckets=_SECONDS, registry=registry)
        self.unavailable = Counter("gazer_http_503_responses", "503 answers (busy, model not ready) by route template",
                                   ["route"], registry=registry)
        self.inference = Histogram("gazer_inference_seconds", "Inference time by model and stage (decode, "
                                   "preprocess, device_preprocess, ort, explain:<method>, faithfulness, render)",
                                   ["model", "stage"], buckets=_SECONDS, registry=registry)
        # with several API processes, one series per process (label `pid`): who answered how many
        self.answered = Gauge("gazer_http_requests_answered", "HTTP requests answered by this API process",
                              multiprocess_mode="liveall", registry=registry)
        self.batch_size = Histogram("gazer_batch_size", "Images per request", ["endpoint"], buckets=_IMAGES,
                                    registry=registry)
        self.run_size = Histogram("gazer_model_run_images", "Images per model run, requests batched together "
                                  "(onnx: predictions, CAM and scoring; torch: gradient explanations)", ["runtime"],
                                  buckets=_IMAGES, registry=registry)
        self.explain_slots_in_use = Gauge("gazer_explain_slots_in_use", "Explanation slots taken",
                                          multiprocess_mode="livesum", registry=registry)
        slots = Gauge("gazer_explain_slots", "Explanation slots in all", multiprocess_mode="livesum",
                      registry=registry)
        slots.set(explanation_slots)
        # Each API process serves models of its own: with several, each sets its own values (at its
        # scrapes and every MODELS_REFRESH_SECONDS) and the most of any live one is shown, one series.
        self.models_loaded = Gauge("gazer_models_loaded", "Models loaded and serving (with several API processes, "
                                   "the most that one serves)", multiprocess_mode="livemax", registry=registry)
        self.models_failed = Gauge("gazer_models_failed", "Models whose last load failed (with several API "
                                   "processes, the most in one)", multiprocess_mode="livemax", registry=registry)
        self.state = state
        live = [StorageCollector(storage), JobsCollector(lambda: getattr(getattr(state, "queue", None), "store", None))]
        for collector in live:
            registry.register(collector)
        self.exposition = registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self.exposition = CollectorRegistry()
            MultiProcessCollector(self.exposition)
            for collector in live:
                self.exposition.register(collector)

    def refresh_models(self) -> None:
        """This process's loaded and failed models, from its ModelRegistry (reads the models folder)."""
        registry = getattr(self.state, "registry", None)
        if registry is not None:
            states = [status["state"] for status in registry.status().values()]
            self.models_loaded.set(states.count("ready"))
            self.models_failed.set(states.count("failed"))
            self._forget_deleted_models(registry.model_ids)

    def _forget_deleted_models(self, served: Callable[[], list[str]]) -> None:
        """Drops the inference series of models deleted since, so that names made and deleted do
        not pile up. In one process only: prometheus-client cannot remove series from the files
        that several processes share. What was observed is read before the models on disk, so a
        model uploaded and used meanwhile keeps its series."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return
        with self._observed_lock:
            observed = set(self._observed)
        on_disk = set(served())
        gone = {(model, stage) for model, stage in observed if model not in on_disk}
        with self._observed_lock:
            self._observed -= gone
            for model, stage in gone:
                self.inference.remove(model, stage)

    async def refresh_models_forever(self) -> None:
        while True:
            await anyio.sleep(MODELS_REFRESH_SECONDS)
            try:
                await run_in_threadpool(self.refresh_models)
            except Exception:  # the models folder unreadable for a moment: the next round tries again
                log.exception("the model gauges could not be refreshed")

    def render(self) -> bytes:
        self.refresh_models()
        if folder := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            forget_dead_processes(folder)
        return generate_latest(self.exposition)

    def observe_request(self, route: str | None, method: str, status: int, seconds: float) -> None:
        route = route or UNMATCHED_ROUTE
        method = method if method in _METHODS else "other"
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)
        self.answered.inc()
        if status == 503:
            self.unavailable.labels(route).inc()

    def stage_recorder(self, model: str) -> Callable[[str, float], None]:
        """An `on_stage` for core.pipeline that records into the inference histogram."""
        def record(stage: str, seconds: float) -> None:
            with self._observed_lock:
                self._observed.add((model, stage))
                self.inference.labels(model, stage).observe(seconds)
        return record


def forget_dead_processes(folder: str) -> None:
    """The live gauges of API processes that have died (uvicorn starts another in their place):
    their files would keep counting slots that no process holds."""
    for path in Path(folder).glob("gauge_live*_*.db"):
        pid = path.stem.rsplit("_", 1)[1]
        if not pid.isdigit():  # not a file prometheus_client wrote
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            mark_process_dead(int(pid), folder)
        except PermissionError:  # alive, someone else's
            pass
