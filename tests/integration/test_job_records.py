"""A job's record in Redis (512 MB, `noeviction`, shared by every client) stays small whatever
the job was asked: a fine-tune's confusion matrix goes to an artifact beyond a few classes, an
activation maximization keeps at most 500 steps of its history, and a result over the bound fails
its job rather than fill Redis. Run in this process, on the real
runners, registry, data sets and a real redis-server."""

from __future__ import annotations

import json
import threading

import pytest
import redis
import torch
from torch import nn

from core.datasets import ArchiveLimits, ingest_archive
from core.job_runners import MAX_CONFUSION_CLASSES_IN_RESULT, JobContext, confusion_matrix_result, run_fine_tune
from core.models.registry import ModelRegistry
from core.models.spec import ModelSpec
from core.models.versions import versions
from core.storage import Storage
from core.visualize.activation_max import maximize
from core.visualize.config import MaximizationConfig, Target
from infra.embedded_redis import EmbeddedRedis
from infra.job_store import MAX_RESULT_BYTES, JobStore
from schemas.jobs import artifact_url
from support import classes_archive
from worker import tasks
from worker.metrics import WorkerMetrics

LIMITS = ArchiveLimits(max_files=1000, max_total_bytes=10**8, max_image_pixels=10**6)


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    storage = Storage(tmp_path_factory.mktemp("records"))
    return JobContext(storage, ModelRegistry(storage, max_loaded=2), 10**6, artifact_url)


def fine_tune_params(dataset_id: str, output_model: str) -> dict:
    return {"dataset_id": dataset_id, "output_model": output_model, "strategy": "feature_extraction", "epochs": 1,
            "input_size": 32, "batch_size": 64}


def quiet(*args, **kwargs) -> None:
    return None


def test_a_fine_tune_of_many_classes_keeps_its_confusion_matrix_out_of_its_record(context):
    """3,000 classes made an 18 MB record: the matrix is in the result up to
    MAX_CONFUSION_CLASSES_IN_RESULT classes, and whole in confusion-matrix.json and metrics.json."""
    classes = MAX_CONFUSION_CLASSES_IN_RESULT + 1
    dataset = ingest_archive(classes_archive(classes), context.storage.datasets, None, LIMITS)
    result = run_fine_tune("many-classes", fine_tune_params(dataset["id"], "many"), quiet, lambda: False, context)
    metrics = result["metrics"]
    assert metrics["confusion_matrix"] is None and len(metrics["classes"]) == classes
    assert metrics["confusion_matrix_url"] == artifact_url("many-classes", "confusion-matrix.json")
    whole = json.loads((context.storage.job_artifacts("many-classes") / "confusion-matrix.json").read_text())
    assert whole["classes"] == metrics["classes"] and [len(row) for row in whole["matrix"]] == [classes] * classes
    assert sum(map(sum, whole["matrix"])) == classes  # one validation image per class
    published = json.loads((context.storage.models / "many" / "1" / "metrics.json").read_text())
    assert published["confusion_matrix"] == whole["matrix"]
    assert len(json.dumps(result)) < 20_000

    few = {"classes": [f"c{index}" for index in range(MAX_CONFUSION_CLASSES_IN_RESULT)],
           "confusion_matrix": [[1] * MAX_CONFUSION_CLASSES_IN_RESULT] * MAX_CONFUSION_CLASSES_IN_RESULT}
    drawn = confusion_matrix_result(few, context.storage.job_artifacts("few"), lambda name: name)
    assert drawn == {"confusion_matrix": few["confusion_matrix"], "confusion_matrix_url": "confusion-matrix.json"}


def test_a_result_over_the_bound_fails_its_job_and_is_not_written(tmp_path):
    """A 600 MB result took Redis past its maxmemory: its writes failed four times, and every
    client's with them."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        store = JobStore.from_url(server.url, lease_seconds=60)
        job = store.create("activation-maximization", {})
        assert store.claim(job["id"], "w")
        result = {"activation_per_step": [[0.5]] * (MAX_RESULT_BYTES // 6)}
        assert tasks._end(store, job["id"], "succeeded", result=result) == "failed"
        ended = store.get(job["id"])
        assert ended["state"] == "failed" and ended["result"] is None
        assert ended["error"]["type"] == "/problems/result-too-large"
        assert f"a job's record holds at most {MAX_RESULT_BYTES}" in ended["error"]["detail"]
        assert len(store.redis.hget(f"gazer:job:{job['id']}", "error")) < 1000
        fits = store.create("activation-maximization", {})
        assert store.claim(fits["id"], "w")
        assert tasks._end(store, fits["id"], "succeeded", result={"activation_per_step": [[0.5]] * 1000}) == "succeeded"
        gone = store.create("fine-tune", {})  # reaped as lost, then its record trimmed, while it ran on
        assert store.claim(gone["id"], "w")
        store.redis.delete(f"gazer:job:{gone['id']}")
        assert tasks._end(store, gone["id"], "succeeded", result={}) == "gone"  # was NotFound, past the withdrawal


def worker_of(store: JobStore, context: JobContext) -> tasks.Worker:
    """What the worker runs a job with; no sweep or message is involved here."""
    return tasks.Worker(store, context, WorkerMetrics(), None, lambda job_id: None, 3600, threading.Event())


def test_a_fine_tune_whose_end_cannot_be_recorded_leaves_no_model_published(context, tmp_path):
    """It published its version, then its result failed to be written four times (Redis past its
    maxmemory): the job read failed/worker-lost, and models/bigc10k/1 stayed, served to anyone."""
    dataset = ingest_archive(classes_archive(2), context.storage.datasets, None, LIMITS)
    with EmbeddedRedis(tmp_path / "redis") as server:
        connection = redis.Redis.from_url(server.url, decode_responses=True)
        store = JobStore(connection, lease_seconds=60, max_result_bytes=500)  # less than a fine-tune's result
        job = store.create("fine-tune", fine_tune_params(dataset["id"], "unrecorded"))
        assert store.claim(job["id"], "w")
        assert tasks._run(store.get(job["id"]), worker_of(store, context), "w") == "failed"
        assert store.get(job["id"])["error"]["type"] == "/problems/result-too-large"
        assert versions(context.storage.models, "unrecorded") == []

        store = JobStore(connection, lease_seconds=60)
        job = store.create("fine-tune", fine_tune_params(dataset["id"], "unrecorded"))
        assert store.claim(job["id"], "w")
        connection.config_set("maxmemory", 1)  # far below what it holds: every write refused from here
        try:
            assert tasks._run(store.get(job["id"]), worker_of(store, context), "w") == "lost"
        finally:
            connection.config_set("maxmemory", 0)
        assert versions(context.storage.models, "unrecorded") == []


def test_a_fine_tune_cancelled_while_it_publishes_ends_cancelled_with_no_model_published(context, tmp_path,
                                                                                          monkeypatch):
    """Its DELETE answered 202 (cancel requested), then the job ended succeeded and its version
    stayed published: nothing looked at the cancel after the last stop check."""
    dataset = ingest_archive(classes_archive(2), context.storage.datasets, None, LIMITS)
    reporting = tasks._progress_report

    def cancelled_once_published(store: JobStore, job_id: str):
        report = reporting(store, job_id)

        def progress(fraction: float, **details) -> None:
            report(fraction, **details)
            if fraction == 1.0 and not details:  # published: past the runner's last stop check
                store.cancel(job_id)
        return progress

    monkeypatch.setattr(tasks, "_progress_report", cancelled_once_published)
    with EmbeddedRedis(tmp_path / "redis") as server:
        store = JobStore.from_url(server.url, lease_seconds=60)
        job = store.create("fine-tune", fine_tune_params(dataset["id"], "cancelled-late"))
        assert store.claim(job["id"], "w")
        assert tasks._run(store.get(job["id"]), worker_of(store, context), "w") == "cancelled"
        assert store.get(job["id"])["state"] == "cancelled"
        assert versions(context.storage.models, "cancelled-late") == []


def test_an_activation_maximization_keeps_a_bounded_history_however_many_steps():
    """Each step added a row for every target: 64 targets made 578 bytes a step, 5.8 MB at the
    10,000 steps allowed. At most 500 evenly spaced steps are kept, the first and the last among
    them; progress still reports every step. On a network small enough to run 751 steps at once."""
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(4, 3))
    spec = ModelSpec("tiny", 1, "tiny", ("a", "b", "c"), 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 0, "bilinear",
                     "0", "4")
    config = MaximizationConfig(Target(classes=(1, 2)), steps=751, size=32, blur_every=0, jitter=0,
                                parameterization="pixel")
    reported = []
    result = maximize(network, spec, config, lambda fraction, **details: reported.append(details), lambda: False, {})
    assert len(result.history) == 500  # all 751 were kept
    assert len(result.history_steps) == 500
    steps = result.history_steps
    assert steps[0] == 1 and steps[-1] == 751 and sorted(set(steps)) == steps
    assert len(reported) == 751 and all(len(row) == 2 for row in result.history)
    for row, step in zip(result.history, result.history_steps):
        assert row == reported[step - 1]["metrics"]["activation"]
