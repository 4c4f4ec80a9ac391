"""Predict and explain a batch of decoded images with a loaded model."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from PIL import Image

from core import imaging
from core.png import encode_png
from core.errors import InvalidRequest, TargetOutOfRange, UnknownLayer, UnknownMethod, UnsupportedMethod
from core.explain import METHODS
from core.explain.base import normalize_maps
from core.explain.cam import class_activation_maps
from core.explain.faithfulness import Faithfulness, deletion_and_insertion
from core.models.registry import LoadedModel
from core.models.spec import ModelSpec
from core.parallel import parallel_map


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    probability: float


@dataclass
class RenderedExplanation:
    method: str
    target: Prediction
    layer: str | None
    heatmap_png: bytes | None
    overlay_png: bytes | None
    map: list[list[float]] | None
    timings_ms: dict[str, float] = field(default_factory=dict)
    faithfulness: Faithfulness | None = None


@dataclass
class ImageResult:
    predictions: list[Prediction]
    explanation: RenderedExplanation | None = None


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def top_predictions(probabilities: np.ndarray, spec: ModelSpec, top_k: int) -> list[list[Prediction]]:
    """The top_k classes of each image (all of them when the model has fewer)."""
    if top_k < 1:
        raise InvalidRequest(f"top_k must be at least 1, got {top_k}", field="top_k")
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    return [[Prediction(int(i), spec.labels[i], float(row[i])) for i in indices]
            for row, indices in zip(probabilities, order)]


def predict(model: LoadedModel, images: list[Image.Image], top_k: int = 5,
            resize: str = "crop") -> list[ImageResult]:
    batch, _ = imaging.preprocess(images, model.spec, resize)
    probabilities = softmax(model.predictor.logits(batch))
    return [ImageResult(predictions) for predictions in top_predictions(probabilities, model.spec, top_k)]


def _resolve_targets(targets: list[int] | None, count: int, spec: ModelSpec) -> torch.Tensor | None:
    if not targets:
        return None
    if len(targets) not in (1, count):
        raise InvalidRequest(f"give one target for all images or one per image ({count}), "
                             f"got {len(targets)}", field="target")
    for target in targets:
        if not 0 <= target < spec.num_classes:
            raise TargetOutOfRange(f"target {target} is out of range: the model has classes 0.."
                                   f"{spec.num_classes - 1}", field="target")
    return torch.tensor(targets * count if len(targets) == 1 else targets, dtype=torch.long)


def _resolve_layer(model: LoadedModel, method_name: str, layer: str | None) -> str | None:
    method = METHODS[method_name]
    if method_name not in model.methods:
        raise UnsupportedMethod(f"model {model.spec.ref!r} cannot answer {method_name} (it needs "
                                f"{'spatial attention' if method.needs_spatial_attention else 'a linear head'})",
                                field="method", valid=model.methods)
    if layer and layer not in model.layers:
        raise UnknownLayer(f"model {model.spec.id!r} has no targetable layer {layer!r}",
                           field="layer", valid=list(model.layers))
    if not method.uses_layer:
        return None
    if method.needs_spatial_attention:
        gates = model.spatial_gates
        if layer and layer not in gates:
            raise UnknownLayer(f"{method_name} shows a spatial attention gate", field="layer", valid=gates)
        return layer or gates[0]
    layer = layer or model.spec.cam_layer
    if method.default_layer_only and layer != model.spec.cam_layer:
        raise UnknownLayer(f"{method_name} works only at the layer that feeds the classifier, "
                           f"{model.spec.cam_layer!r}", field="layer", valid=[model.spec.cam_layer])
    return layer


OUTPUTS = ("heatmap", "overlay", "map")


def explain(model: LoadedModel, images: list[Image.Image], method_name: str,
            targets: list[int] | None = None, layer: str | None = None,
            options: dict[str, object] | None = None, top_k: int = 5,
            outputs: tuple[str, ...] = ("heatmap", "overlay"), resize: str = "crop",
            faithfulness: bool = False) -> list[ImageResult]:
    """`outputs`: `heatmap` and `overlay` PNGs the image's size, `map` the raw [0, 1] map at
    the explained layer's (or the input's) resolution. `resize`: see imaging.RESIZE_MODES.
    `faithfulness`: each map's deletion and insertion scores, on ONNX Runtime."""
    if method_name not in METHODS:
        raise UnknownMethod(f"unknown method {method_name!r}", field="method", valid=sorted(METHODS))
    for output in outputs:
        if output not in OUTPUTS:
            raise InvalidRequest(f"unknown output {output!r}", field="outputs", valid=list(OUTPUTS))
    spec = model.spec
    layer = _resolve_layer(model, method_name, layer)
    wanted = _resolve_targets(targets, len(images), spec)
    started = time.perf_counter()
    batch, boxes = imaging.preprocess(images, spec, resize)
    preprocessed = time.perf_counter()
    if method_name == "cam":
        maps, logits, chosen = _cam_from_onnx(model, batch, wanted)
    else:
        inputs = torch.from_numpy(batch).to(model.device)
        method = METHODS[method_name]
        # Measured faster on CPU only; on a GPU the masked batches stay with torch.
        on_cpu = model.device.type == "cpu"
        extra = {"score": onnx_scorer(model)} if method.scores_masked_inputs and on_cpu else {}
        with model.lock:
            result = method(model.network, inputs, wanted, layer, input_mean=spec.mean, input_std=spec.std,
                            **(options or {}), **extra)
        maps, logits, chosen = result.maps, result.logits.float().cpu().numpy(), result.targets.cpu().numpy()
    explained = time.perf_counter()
    probabilities = softmax(logits)
    predictions = top_predictions(probabilities, spec, top_k)
    timings = {"preprocess": (preprocessed - started) * 1000, "model": (explained - preprocessed) * 1000}
    scores: list[Faithfulness | None] = [None] * len(images)
    if faithfulness:
        score, inputs = onnx_scorer(model), torch.from_numpy(batch)
        scores = [deletion_and_insertion(score, inputs[index], maps[index], int(chosen[index]),
                                         spec.mean, spec.std) for index in range(len(images))]
        timings["faithfulness"] = (time.perf_counter() - explained) * 1000

    def render(index: int) -> ImageResult:
        image, box = images[index], boxes[index]
        render_start = time.perf_counter()
        heat = imaging.place_heatmap(maps[index], box, image.width, image.height) \
            if "heatmap" in outputs or "overlay" in outputs else None
        heatmap_png = encode_png(heat) if "heatmap" in outputs else None
        overlay_png = encode_png(imaging.overlay(image, heat, box)) if "overlay" in outputs else None
        raw = np.round(maps[index], 4).tolist() if "map" in outputs else None
        target = int(chosen[index])
        rendered = RenderedExplanation(
            method_name, Prediction(target, spec.labels[target], float(probabilities[index, target])), layer,
            heatmap_png, overlay_png, raw, {**timings, "render": (time.perf_counter() - render_start) * 1000},
            scores[index])
        return ImageResult(predictions[index], rendered)

    return parallel_map(render, range(len(images)))


def onnx_scorer(model: LoadedModel) -> Callable[[torch.Tensor], torch.Tensor]:
    """Logits of a batch from the model's ONNX Runtime session, for methods that only score."""
    def score(inputs: torch.Tensor) -> torch.Tensor:
        logits = model.predictor.logits(inputs.detach().float().cpu().numpy())
        return torch.from_numpy(logits).to(inputs.device)
    return score


def _cam_from_onnx(model: LoadedModel, batch: np.ndarray,
                   wanted: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CAM from the feature map of the same ONNX Runtime forward that makes the prediction."""
    logits, features = model.predictor.logits_and_features(batch)
    chosen = torch.from_numpy(logits.argmax(axis=1)) if wanted is None else wanted
    weight = model.network.get_submodule(model.spec.classifier_layer).weight.detach().float().cpu()
    maps = class_activation_maps(torch.from_numpy(features), weight, chosen)
    return normalize_maps(torch.relu(maps)), logits, chosen.numpy()
