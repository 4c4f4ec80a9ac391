"""A sweep's trial: a fine-tune job whose params carry `trial` (its sweep, study and number).
It reports each epoch's validation metric to its sweep's pruner and stops `pruned` when told;
its model goes to the sweep's folder, not the registry: the sweep registers the best one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from safetensors.torch import load_file, save_file

from core.datasets import dataset_images
from core.job_runners import JobContext, check_fine_tune, fine_tune_config
from core.jobs import JobCancelled, JobPruned, Progress, ShouldStop, finite
from core.models.registry import build_for
from core.models.spec import ModelSpec
from core.runtime.devices import torch_device
from core.storage import Storage
from core.training.finetune import fine_tune

# (the params' `trial`, epoch from 1, the epoch's validation metric) -> whether to prune now
ReportEpoch = Callable[[dict[str, Any], int, float], bool]
WEIGHTS, SPEC, METRICS = "weights.safetensors", "spec.json", "metrics.json"
RESULT_METRICS = ("val_accuracy", "val_loss", "best_epoch", "history", "stopped_early", "lr_finder")


def trials_folder(storage: Storage, sweep_id: str) -> Path:
    """Where a sweep's trials keep their weights, one folder each, until the sweep ends."""
    return storage.job_artifacts(sweep_id) / "trials"


def trial_folder(storage: Storage, trial: dict[str, Any]) -> Path:
    return trials_folder(storage, trial["sweep"]) / str(int(trial["number"]))


def pruned_when_told(progress: Progress, trial: dict[str, Any], report_epoch: ReportEpoch) -> Progress:
    """`progress` that also reports each finished epoch's metric; raises JobPruned when the
    pruner says this trial will not catch up."""
    def report(fraction: float, **details: Any) -> None:
        progress(fraction, **finite(details))
        metrics = details.get("metrics") or {}
        if trial["metric"] in metrics and report_epoch(trial, details["epoch"], metrics[trial["metric"]]):
            raise JobPruned(f"pruned after epoch {details['epoch']}: its {trial['metric']} "
                            f"({metrics[trial['metric']]:.4g}) is behind the median of earlier trials")
    return report


def run_trial(job_id: str, params: dict[str, Any], progress: Progress, should_stop: ShouldStop,
              context: JobContext, report_epoch: ReportEpoch) -> dict[str, Any]:
    trial = params["trial"]
    config = fine_tune_config({key: value for key, value in params.items() if key != "trial"})
    check_fine_tune(config, context.registry, context.storage.datasets)
    base_spec, base_network = context.registry.load_network(config.base_model)
    classes, items = dataset_images(context.storage.datasets, config.dataset_id)
    trained = fine_tune(config, base_spec, base_network, classes, items,
                        pruned_when_told(progress, trial, report_epoch), should_stop, torch_device(),
                        context.max_image_pixels)
    if should_stop():
        raise JobCancelled("the trial was stopped before its model was kept")
    folder = trial_folder(context.storage, trial)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in trained.network.state_dict().items()}, str(folder / WEIGHTS))
    (folder / SPEC).write_text(trained.spec.to_json())
    (folder / METRICS).write_text(json.dumps(finite(trained.metrics)))
    kept = {key: trained.metrics[key] for key in RESULT_METRICS if key in trained.metrics}
    progress(1.0)  # also where it stopped early, before its last epoch
    return {"trial": trial["number"], "metrics": finite(kept)}


def load_trial(folder: Path) -> tuple[ModelSpec, Any, dict[str, Any]]:
    """The spec, network and training metrics a trial kept."""
    spec = ModelSpec.from_json((folder / SPEC).read_text())
    network = build_for(spec)
    network.load_state_dict(load_file(str(folder / WEIGHTS)))
    return spec, network.eval(), json.loads((folder / METRICS).read_text())
