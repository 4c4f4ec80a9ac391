"""The bodies of long jobs: plain functions from a job's JSON parameters to its JSON result,
reporting through `progress(fraction, **details)` and stopping when `should_stop()` is true."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from core.datasets import dataset_images, describe_dataset
from core.errors import InvalidRequest
from core.jobs import Progress, ShouldStop
from core.models import catalog, versions
from core.models.registry import ModelRegistry
from core.png import encode_png
from core.runtime.devices import torch_device
from core.storage import Storage, check_name
from core.training.config import Augmentation, FineTuneConfig
from core.training.finetune import fine_tune
from core.visualize.activation_max import MaximizationConfig, maximize


FINE_TUNE = "fine-tune"
ACTIVATION_MAXIMIZATION = "activation-maximization"


@dataclass
class JobContext:
    storage: Storage
    registry: ModelRegistry

    def artifact_url(self, job_id: str, name: str) -> str:
        return f"/v1/jobs/{job_id}/artifacts/{name}"


def fine_tune_config(params: dict[str, Any]) -> FineTuneConfig:
    fields = dict(params)
    head = fields.pop("head", None) or {}
    fields["head_hidden"] = head.get("hidden", 0)
    fields["head_dropout"] = head.get("dropout", 0.2)
    fields["augmentation"] = Augmentation(**(fields.get("augmentation") or {}))
    return FineTuneConfig(**fields)


def check_fine_tune(config: FineTuneConfig, context: JobContext) -> None:
    """What can be checked before queueing: the base model and data set exist, the name is free."""
    context.registry.spec(config.base_model)
    describe_dataset(context.storage.datasets, config.dataset_id)
    check_name(config.output_model, "output_model")
    if config.output_model in catalog.BUILTIN_MODELS:
        raise InvalidRequest(f"output_model {config.output_model!r} is a built-in model's name", field="output_model")


def run_fine_tune(job_id: str, params: dict[str, Any], progress: Progress, should_stop: ShouldStop,
                  context: JobContext) -> dict[str, Any]:
    config = fine_tune_config(params)
    check_fine_tune(config, context)
    base_spec, base_network = context.registry.load_network(config.base_model)
    classes, items = dataset_images(context.storage.datasets, config.dataset_id)
    trained = fine_tune(config, base_spec, base_network, classes, items, progress, should_stop, torch_device())
    progress(1.0, phase="exporting")
    spec = versions.save_version(context.storage.models, trained.spec, trained.network, trained.metrics)
    metrics = trained.metrics
    return {"model": {"id": spec.id, "version": spec.version},
            "metrics": {key: metrics[key] for key in ("val_accuracy", "val_loss", "best_epoch", "per_class_accuracy",
                                                      "confusion_matrix", "classes", "history",
                                                      "train_images_per_second", "stopped_early")}}


def maximization_config(params: dict[str, Any]) -> tuple[str, MaximizationConfig]:
    fields = dict(params)
    model = fields.pop("model")
    target = fields.pop("target")
    if "class" in target:
        fields["classes"] = (target["class"],)
    elif "classes" in target:
        fields["classes"] = tuple(target["classes"])
    else:
        fields["layer"] = target.get("layer")
        fields["channels"] = tuple(target.get("channels") or ())
    return model, MaximizationConfig(**fields)


def run_activation_maximization(job_id: str, params: dict[str, Any], progress: Progress, should_stop: ShouldStop,
                                context: JobContext) -> dict[str, Any]:
    model_ref, config = maximization_config(params)
    spec, network = context.registry.load_network(model_ref)
    result = maximize(network.to(torch_device()), spec, config, progress, should_stop)
    folder = context.storage.job_artifacts(job_id)
    folder.mkdir(parents=True, exist_ok=True)
    targets = ([{"class": c, "label": spec.labels[c]} for c in config.classes] if config.classes
               else [{"layer": config.layer, "channel": c} for c in config.channels])
    images = []
    for index, (target, pixels) in enumerate(zip(targets, result.images)):
        name = f"target-{index}.png"
        (folder / name).write_bytes(encode_png(pixels))
        images.append({"target": target, "url": context.artifact_url(job_id, name),
                       "activation": result.activations[index], "probability": result.probabilities[index]})
    return {"model": {"id": spec.id, "version": spec.version}, "images": images,
            "activation_per_step": result.history}


RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    FINE_TUNE: run_fine_tune,
    ACTIVATION_MAXIMIZATION: run_activation_maximization,
}
