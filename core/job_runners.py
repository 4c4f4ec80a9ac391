"""The bodies of long jobs: plain functions from a job's JSON parameters to its JSON result,
reporting through `progress(fraction, **details)` and stopping when `should_stop()` is true."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch

from core import memory
from core.datasets import dataset_images, describe_dataset
from core.dataset_explain.runner import explain_dataset, explain_dataset_config
from core.errors import InvalidRequest
from core.jobs import JobCancelled, Progress, ShouldStop, share_of
from core.models.adapted import adapt, construct_on_meta
from core.models.layers import targetable_layers
from core.models.registry import ModelRegistry
from core.names import BUILTIN_MODELS, EFFICIENTNET_LITE_SIZES, ONNX_ARCHITECTURE
from core.params import check_params, from_params
from core.png import encode_png
from core.runtime.devices import torch_device
from core.storage import Storage, check_name
from core.training.config import FineTuneConfig
from core.training.finetune import fine_tune
from core.training.lr_finder import lr_finder_result
from core.training.report import validation_report, write_report
from core.visualize.activation_max import maximize
from core.visualize.config import MaximizationConfig

FINE_TUNE = "fine-tune"
ACTIVATION_MAXIMIZATION = "activation-maximization"
EXPLAIN_DATASET = "explain-dataset"


@dataclass
class JobContext:
    storage: Storage
    registry: ModelRegistry
    max_image_pixels: int
    # (job id, artifact name) -> where clients fetch the artifact; the API's routes decide it.
    artifact_url: Callable[[str, str], str]


def fine_tune_config(params: dict[str, Any]) -> FineTuneConfig:
    return from_params(FineTuneConfig, params)


# Under it the last feature maps of a network of stride 32 may be 1 x 1 (Lite0's and ResNet-18's at 32),
# where a training BatchNorm has one value per channel from one image
SMALLEST_INPUT_FOR_ONE_IMAGE_BATCHES = 64


def check_fine_tune(config: FineTuneConfig, registry: ModelRegistry, datasets_dir: Path,
                    memory_limit: int | None = None, max_classes: int | None = None) -> None:
    """What can be checked before queueing: the values, the base model and the data set
    exist, the data set has at most `max_classes` classes, the name is free, and the estimated
    memory fits `memory_limit` bytes."""
    check_params(config)
    check_name(config.base_model.partition("@")[0], "base_model")
    base = registry.spec(config.base_model)
    if base.architecture == ONNX_ARCHITECTURE:
        raise InvalidRequest(f"{config.base_model!r} is served from ONNX alone: it has no torch network to "
                             f"fine-tune", field="base_model")
    dataset = describe_dataset(datasets_dir, config.dataset_id)
    if max_classes is not None and len(dataset["classes"]) > max_classes:
        raise InvalidRequest(f"data set {config.dataset_id!r} has {len(dataset['classes'])} classes; a fine-tune "
                             f"trains at most {max_classes} (GAZER_MAX_CLASSES)", field="dataset_id")
    if max(dataset["counts"].values(), default=0) < 2:
        raise InvalidRequest(f"data set {config.dataset_id!r} has one image per class, and a fine-tune measures itself "
                             f"on images it does not train on (val_fraction of each class, at least one where a class "
                             f"has two): upload a data set with at least one class of 2 images or more",
                             field="dataset_id")
    input_size = config.input_size or base.input_size
    if input_size != base.input_size:
        check_explainable_at(base.architecture, input_size)
    if config.batch_size == 1 and config.strategy != "feature_extraction" and \
            input_size < SMALLEST_INPUT_FOR_ONE_IMAGE_BATCHES:
        raise InvalidRequest(f"batch_size 1 at input_size {input_size}: under {SMALLEST_INPUT_FOR_ONE_IMAGE_BATCHES} "
                             f"the last feature maps may be 1 x 1, where a BatchNorm layer cannot train on one image: "
                             f"use a batch_size of 2 or more, or an input_size of "
                             f"{SMALLEST_INPUT_FOR_ONE_IMAGE_BATCHES} or more", field="batch_size")
    check_name(config.output_model, "output_model")
    if config.output_model.casefold() in BUILTIN_MODELS:
        raise InvalidRequest(f"output_model {config.output_model!r} is a built-in model's name", field="output_model")
    if memory_limit is not None:
        needed = memory.training_bytes(dataset["images"], len(dataset["classes"]), config.batch_size,
                                       input_size, base.resize_margin)
        check_memory(needed, memory_limit, f"fine-tuning on {dataset['images']} images in "
                                           f"{len(dataset['classes'])} classes at batch {config.batch_size}",
                     "batch_size")


def check_explainable_at(architecture: str, input_size: int) -> None:
    """Refuses an input size at which an uploaded architecture's last feature map is 1 x 1 (found
    on the meta device: no memory, no arithmetic); a built-in one is explained at any size."""
    if architecture in EFFICIENTNET_LITE_SIZES:
        return
    try:
        network = construct_on_meta(architecture)
        with torch.device("meta"):  # the new classifier too
            adapt(architecture, 2, input_size, network=network)
    except InvalidRequest:
        raise
    except Exception:  # an operator the meta device lacks: the fine-tune itself will tell
        return


def check_maximization_memory(config: MaximizationConfig, input_size: int, memory_limit: int) -> None:
    check_memory(memory.maximization_bytes(config.count, config.size or input_size), memory_limit,
                 f"{config.count} targets at {config.size or input_size} px", "target")


def check_memory(needed: int, limit: int, what: str, field: str) -> None:
    if needed > limit:
        raise InvalidRequest(f"{what} would need about {memory.describe(needed)} of memory; a worker has "
                             f"{memory.describe(limit)} (GAZER_WORKER_MEMORY_BYTES)", field=field,
                             estimate_bytes=needed, limit_bytes=limit)


def run_fine_tune(job_id: str, params: dict[str, Any], progress: Progress, should_stop: ShouldStop,
                  context: JobContext) -> dict[str, Any]:
    config = fine_tune_config(params)
    check_fine_tune(config, context.registry, context.storage.datasets)
    base_spec, base_network = context.registry.load_network(config.base_model)
    classes, items = dataset_images(context.storage.datasets, config.dataset_id)
    started = time.perf_counter()
    trained = fine_tune(config, base_spec, base_network, classes, items, share_of(progress, 0.0, TRAINING_SHARE),
                        should_stop, torch_device(), context.max_image_pixels)
    training_seconds = time.perf_counter() - started
    report = validation_report(config, trained.spec, trained.network, items, context.max_image_pixels,
                               torch_device(), share_of(progress, TRAINING_SHARE, 1.0), should_stop)
    progress(1.0, phase="exporting")
    if should_stop():  # a job reaped as lost while it trained publishes nothing
        raise JobCancelled("the job was stopped before its model was published")
    folder, url = context.storage.job_artifacts(job_id), partial(context.artifact_url, job_id)
    summary = write_report(report, folder, url)
    metrics = trained.metrics
    lr_finder = lr_finder_result(metrics, folder, url)
    confusion = confusion_matrix_result(metrics, folder, url)
    # last: a failure after it (a full disk) would leave a version published by a failed job
    spec = context.registry.register_network(trained.spec, trained.network, trained.metrics)
    progress(1.0)  # exported: the finished job's progress names no phase
    return {"model": {"id": spec.id, "version": spec.version}, **lr_finder,
            "metrics": {**{key: metrics[key] for key in ("val_accuracy", "val_loss", "best_epoch", "per_class_accuracy",
                                                         "classes", "history", "train_images_per_second",
                                                         "stopped_early")}, **confusion},
            "report": {**summary, "training_seconds": round(training_seconds, 3)}}


TRAINING_SHARE = 0.9  # of a fine-tune's progress; its report takes the rest
CONFUSION_FILE = "confusion-matrix.json"
# A fine-tune's result, its job record in Redis, holds its confusion matrix up to this many classes,
# about as many as the web page draws legibly; CONFUSION_FILE and the version's metrics.json hold it
# whatever the count (3,000 classes made an 18 MB record).
MAX_CONFUSION_CLASSES_IN_RESULT = 32


def confusion_matrix_result(metrics: dict[str, Any], folder: Path, url: Callable[[str], str]) -> dict[str, Any]:
    """A fine-tune result's `confusion_matrix` (None beyond MAX_CONFUSION_CLASSES_IN_RESULT
    classes) and `confusion_matrix_url`, CONFUSION_FILE's URL, written to `folder` first."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFUSION_FILE).write_text(json.dumps({"classes": metrics["classes"],
                                                     "matrix": metrics["confusion_matrix"]}))
    small = len(metrics["classes"]) <= MAX_CONFUSION_CLASSES_IN_RESULT
    return {"confusion_matrix": metrics["confusion_matrix"] if small else None,
            "confusion_matrix_url": url(CONFUSION_FILE)}


def maximization_config(params: dict[str, Any]) -> MaximizationConfig:
    return from_params(MaximizationConfig, params)


def run_activation_maximization(job_id: str, params: dict[str, Any], progress: Progress, should_stop: ShouldStop,
                                context: JobContext) -> dict[str, Any]:
    config = maximization_config(params)
    spec, network = context.registry.load_network(config.model)
    network = network.to(torch_device())
    result = maximize(network, spec, config, progress, should_stop, targetable_layers(network, spec.input_size))
    folder = context.storage.job_artifacts(job_id)
    folder.mkdir(parents=True, exist_ok=True)
    target = config.target
    targets = ([{"class": c, "label": spec.labels[c]} for c in target.classes] if target.classes
               else [{"layer": target.layer, "channel": c} for c in target.channels])
    images = []
    for index, (described, pixels) in enumerate(zip(targets, result.images)):
        name = f"target-{index}.png"
        (folder / name).write_bytes(encode_png(pixels))
        images.append({"target": described, "url": context.artifact_url(job_id, name),
                       "activation": result.activations[index], "probability": result.probabilities[index],
                       "served_probability": result.served_probabilities[index]})
    return {"model": {"id": spec.id, "version": spec.version}, "images": images,
            "activation_per_step": result.history, "activation_steps": result.history_steps}


def run_explain_dataset(job_id: str, params: dict[str, Any], progress: Progress, should_stop: ShouldStop,
                        context: JobContext) -> dict[str, Any]:
    config = explain_dataset_config(params)
    return explain_dataset(config, context.registry.get(config.model), context.storage.datasets,
                           context.storage.job_artifacts(job_id), lambda name: context.artifact_url(job_id, name),
                           context.max_image_pixels, progress, should_stop)


RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    FINE_TUNE: run_fine_tune,
    ACTIVATION_MAXIMIZATION: run_activation_maximization,
    EXPLAIN_DATASET: run_explain_dataset,
}
