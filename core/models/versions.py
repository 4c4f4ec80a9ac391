"""Fine-tuned model versions on disk: models/<name>/<version>/{weights.safetensors, model.onnx,
spec.json, metrics.json}. A version folder appears whole (written aside, then renamed)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from core.models.catalog import file_digest
from core.models.onnx_export import export_onnx
from core.models.spec import ModelSpec

WEIGHTS, ONNX, SPEC, METRICS = "weights.safetensors", "model.onnx", "spec.json", "metrics.json"


def versions(models_dir: Path, name: str) -> list[int]:
    folder = models_dir / name
    if not folder.is_dir():
        return []
    return sorted(int(entry.name) for entry in folder.iterdir() if entry.name.isdigit())


def version_dir(models_dir: Path, name: str, version: int) -> Path:
    return models_dir / name / str(version)


def model_names(models_dir: Path) -> list[str]:
    if not models_dir.is_dir():
        return []
    return sorted(entry.name for entry in models_dir.iterdir() if versions(models_dir, entry.name))


def save_version(models_dir: Path, spec: ModelSpec, network: nn.Module, metrics: dict) -> ModelSpec:
    """Write a new version of `spec.id` and return its spec (version number and digest set)."""
    (models_dir / spec.id).mkdir(parents=True, exist_ok=True)
    staging = models_dir / spec.id / f".staging-{os.getpid()}-{id(network)}"
    staging.mkdir()
    try:
        network = network.cpu().eval()
        save_file({key: value.contiguous() for key, value in network.state_dict().items()}, str(staging / WEIGHTS))
        export_onnx(network, spec.input_size, staging / ONNX)
        (staging / METRICS).write_text(json.dumps(metrics, indent=1))
        digest = file_digest(staging / WEIGHTS)
        while True:
            version = (versions(models_dir, spec.id) or [0])[-1] + 1
            final = replace(spec, version=version, weights_digest=digest)
            (staging / SPEC).write_text(final.to_json())
            try:
                staging.rename(version_dir(models_dir, spec.id, version))
                return final
            except OSError:
                continue  # another job took this number first
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def read_spec(models_dir: Path, name: str, version: int) -> ModelSpec:
    return ModelSpec.from_json((version_dir(models_dir, name, version) / SPEC).read_text())


def load_weights(models_dir: Path, spec: ModelSpec, network: nn.Module) -> nn.Module:
    network.load_state_dict(load_file(str(version_dir(models_dir, spec.id, spec.version) / WEIGHTS)))
    return network.eval()
