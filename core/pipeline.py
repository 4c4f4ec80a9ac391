"""Predict and explain a batch of decoded images with a loaded model."""

from __future__ import annotations

import json
import math
import threading
from contextlib import nullcontext
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from PIL import Image

from core import cancellation, imaging
from core.batching import Batcher
from core.encoding import IMAGE_FORMATS, MAX_SIDE, encode_image
from core.errors import InvalidRequest, NonFiniteScores, TargetOutOfRange, UnknownLayer, UnknownMethod, \
    UnsupportedMethod
from core.explain import METHODS
from core.explain.base import TOP_CLASS, Explanation, GateRange, LayerMethod, Method
from core.explain.cam import FeatureSource, at_classifier_layer
from core.explain.faithfulness import DEFAULT_STEPS as FAITHFULNESS_STEPS
from core.explain.faithfulness import Faithfulness, deletion_and_insertion
from core.models.registry import LoadedModel
from core.models.spec import ModelSpec
from core.names import OUTPUTS
from core.parallel import parallel_map, torch_on_this_thread
from core.png import encode_png
from core.runtime.devices import fast_layout, fast_math

# Told each stage's wall time in seconds: preprocess, ort, explain:<method>, faithfulness, render.
OnStage = Callable[[str, float], None]


def _ignore(stage: str, seconds: float) -> None:
    pass


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
    overlay: bytes | None           # in `overlay_format`
    map: list[list[float]] | None
    timings_ms: dict[str, float] = field(default_factory=dict)
    faithfulness: Faithfulness | None = None
    gate: GateRange | None = None   # attention maps: the raw gate's range over the image
    overlay_format: str = "jpeg"
    flat: bool = False              # one value everywhere: nothing pointed at
    crop: tuple[int, int, int, int] | None = None  # (left, top, right, bottom) of the heatmap the model saw


@dataclass
class ImageResult:
    predictions: list[Prediction]
    explanation: RenderedExplanation | None = None


def softmax(logits: np.ndarray) -> np.ndarray:
    """In float32 at least: a float16 graph's 70,000 exponentials overflowed its sum (65,504)."""
    logits = logits.astype(np.promote_types(logits.dtype, np.float32), copy=False)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def probabilities(model: LoadedModel, logits: np.ndarray) -> np.ndarray:
    """Each image's softmax. An image that the model scores NaN or infinite has none: a 422
    naming the file (an upload's check sees random inputs only, so such a model can be served)."""
    index = _first_not_finite(logits)
    if index is not None:
        raise _not_finite(index, f"model {model.spec.ref!r} scored it NaN or infinite, so it has no probabilities; "
                                 f"the model, not the image, is at fault", f"file.{index}")
    return softmax(logits)


def _first_not_finite(values: np.ndarray) -> int | None:
    """The first image (along the first axis) with a NaN or infinite value, if any."""
    finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    return None if finite.all() else int(np.flatnonzero(~finite)[0])


def _not_finite(index: int, why: str, field: str) -> NonFiniteScores:
    """`why` apart too: an explain-dataset job writes it in the image's row, where "file N" means nothing."""
    return NonFiniteScores(f"file {index}: {why}", field=field, why=why)


def top_predictions(probabilities: np.ndarray, spec: ModelSpec, top_k: int) -> list[list[Prediction]]:
    """The top_k classes of each image (all of them when the model has fewer)."""
    if top_k < 1:
        raise InvalidRequest(f"top_k must be at least 1, got {top_k}", field="top_k")
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    return [[Prediction(int(i), spec.labels[i], float(row[i])) for i in indices]
            for row, indices in zip(probabilities, order)]


def predict(model: LoadedModel, images: list[Image.Image], top_k: int = 5,
            resize: str = "crop", on_stage: OnStage = _ignore) -> list[ImageResult]:
    started = time.perf_counter()
    batch, _ = imaging.preprocess(images, model.spec, resize)
    preprocessed = time.perf_counter()
    on_stage("preprocess", preprocessed - started)
    logits = onnx_run(model, ("logits",), batch)[0]
    on_stage("ort", time.perf_counter() - preprocessed)
    return ranked(model, logits, top_k)


def ranked(model: LoadedModel, logits: np.ndarray, top_k: int) -> list[ImageResult]:
    return [ImageResult(predictions) for predictions in
            top_predictions(probabilities(model, logits), model.spec, top_k)]


def onnx_runs(model: LoadedModel) -> Batcher:
    """The model's ONNX Runtime runs, batched across requests (keys: the outputs wanted)."""
    return model.batcher("onnx", lambda outputs, batches: model.predictor.run_batches(outputs, batches),
                         runners=model.predictor.concurrent_runs)


def submit_onnx(model: LoadedModel, outputs: tuple[str, ...], batch: np.ndarray | torch.Tensor,
                gone: threading.Event | None = None) -> Future:
    """A future of `outputs` (a list of arrays) for `batch`, run with other requests' inputs."""
    return onnx_runs(model).submit(outputs, batch, len(batch), gone)


def onnx_run(model: LoadedModel, outputs: tuple[str, ...], batch: np.ndarray) -> list[np.ndarray]:
    return onnx_runs(model)(outputs, batch, len(batch))


def resolve_targets(targets: list[int] | None, count: int, spec: ModelSpec) -> torch.Tensor | None:
    """The class each of `count` images is explained for (None: each one's top-1), or why not."""
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


def default_method(model: LoadedModel) -> str:
    """What explain runs when the request names no method: Grad-CAM, or occlusion (the cheaper
    model-agnostic method) for a model served from ONNX alone, which has no gradients."""
    return "gradcam" if "gradcam" in model.methods else "occlusion"


def _resolve_method(model: LoadedModel, method_name: str) -> Method:
    if method_name not in METHODS:
        raise UnknownMethod(f"unknown method {method_name!r}", field="method", valid=model.methods)
    method = METHODS[method_name]
    if method_name not in model.methods:
        needs = ("gradients, and the model is served from ONNX alone" if model.network is None
                 else "spatial attention" if method.needs_spatial_attention
                 else "a network whose activations are all ReLU modules (through SiLU, GELU or Hardswish ones, or "
                      "a functional ReLU, nothing is guided: it would be the plain gradient, saliency, in part or in "
                      "whole)" if method.needs_guided_activations
                 else "the logits to be a linear classifier of the pooled CAM layer")
        raise UnsupportedMethod(f"model {model.spec.ref!r} cannot answer {method_name}: it needs {needs}; "
                                f"it answers {', '.join(model.methods)}", field="method", valid=model.methods)
    return method


def method_options(model: LoadedModel) -> dict[str, list[str]]:
    """The options each of the model's methods takes."""
    return {name: METHODS[name].option_names for name in model.methods}


def layer_methods(model: LoadedModel) -> list[str]:
    """The model's methods that explain at a layer (and take `layer`)."""
    return [name for name in model.methods if METHODS[name].uses_layer]


def _resolve_layer(model: LoadedModel, method_name: str, layer: str | None) -> str | None:
    method = METHODS[method_name]
    if layer and not method.uses_layer:
        takers = layer_methods(model)
        raise InvalidRequest(f"{method_name} explains the input's pixels and takes no layer: leave layer out"
                             + (f", or choose a method that does ({', '.join(takers)})" if takers else ""),
                             field="layer", valid=takers)
    if layer and layer not in model.layers:
        raise UnknownLayer(f"model {model.spec.id!r} has no targetable layer {layer!r}",
                           field="layer", valid=list(model.layers))
    if not method.uses_layer:
        return None
    if method.needs_spatial_attention:
        gates = model.spatial_gates
        if layer and layer not in gates:
            # an attention module, as the model's `attention` lists it, names the gate inside it
            inside = [gate for gate in gates if gate.startswith(f"{layer}.")]
            if len(inside) != 1:
                raise UnknownLayer(f"{method_name} shows a spatial attention gate, named here or by the attention "
                                   f"module that holds it; {layer!r} is neither", field="layer", valid=gates)
            layer = inside[0]
        return layer or gates[0]
    layer = layer or model.spec.cam_layer
    if method.default_layer_only and layer != model.spec.cam_layer:
        raise UnknownLayer(f"{method_name} works only at the layer that feeds the classifier, "
                           f"{model.spec.cam_layer!r}", field="layer", valid=[model.spec.cam_layer])
    return layer


def _plan(model: LoadedModel, method_name: str, layer: str | None,
          options: dict[str, object] | None) -> tuple[Method, dict[str, object], str | None]:
    """The method, its checked options (defaults filled in) and the layer it runs at."""
    method = _resolve_method(model, method_name)
    checked = method.options(method_name, options or {})
    return method, checked, _resolve_layer(model, method_name, layer)


def explain_cost(model: LoadedModel, method_name: str, layer: str | None, options: dict[str, object] | None,
                 images: int, faithfulness: bool = False, outputs: tuple[str, ...] = ()) -> int:
    """What explain would cost, in forward-equivalents (a backward counts as one) of the
    budget's reference model, EfficientNet-Lite0 at 224 (flops.REFERENCE_FLOPS: a larger model's
    forward counts as several), before it runs. Refuses what explain would refuse: an unknown
    method, layer, option or output, or raw maps over MAX_MAP_VALUES."""
    method, checked, layer = _plan(model, method_name, layer, options)
    _check_outputs(outputs, model, method_name, layer, images)
    method = METHODS["cam"] if from_feature_map(model, method_name, layer) else method  # one forward
    per_image = _cost_per_image(model, method, checked, layer)
    forwards = images * (per_image + (2 * (FAITHFULNESS_STEPS + 1) if faithfulness else 0))
    return round(model.forward_cost * forwards)  # forward_cost >= 1: never under `forwards`


def forward_cost_note(model: LoadedModel) -> str:
    """What a cost's refusal says of a model whose forward counts as more than one."""
    if model.forward_cost == 1:
        return ""
    return f", a forward of {model.spec.ref} counting as {model.forward_cost:.1f} of EfficientNet-Lite0 at 224's"


def _cost_per_image(model: LoadedModel, method: Method, options: dict[str, object], layer: str | None) -> int:
    return method.cost(options, model.spec.input_size, model.layers.get(layer, 0) if layer else 0)


# The most raw map values one request returns (`outputs=map`): 64 maps of Lite2's 260 x 260
# input. As JSON each value is about 7 bytes, and a Python float while the answer is built.
MAX_MAP_VALUES = 64 * 260 * 260


def map_positions(model: LoadedModel, method_name: str, layer: str | None) -> int:
    """The values of one raw map of `method_name` at `layer` (None: its default): the layer's
    height x width for a method whose map is its layer's (the CAM family; a padding layer's is
    larger than the input: Lite0's stem padding is 225 x 225), else the input's."""
    return _positions(model, method_name, _resolve_layer(model, method_name, layer))


def _positions(model: LoadedModel, method_name: str, resolved: str | None) -> int:
    """map_positions at the layer the method runs at, resolved once: the default layer is not
    checked again (a CAM layer whose map is 1 x 1, under 64 px, is no targetable layer, yet the
    default: checked again, it failed every outputs=map and every data set explanation)."""
    at_layer = model.map_positions.get(resolved or "") if METHODS[method_name].map_at_layer else None
    return at_layer or model.spec.input_size ** 2


def most_raw_maps(model: LoadedModel, method_name: str, layer: str | None) -> int:
    """How many raw maps (`outputs=map`) one explain returns at most: as many as MAX_MAP_VALUES holds."""
    return MAX_MAP_VALUES // map_positions(model, method_name, layer)


def _check_outputs(outputs: tuple[str, ...], model: LoadedModel, method_name: str, layer: str | None,
                   images: int) -> None:
    """`layer`: resolved (_resolve_layer)."""
    for output in outputs:
        if output not in OUTPUTS:
            raise InvalidRequest(f"unknown output {output!r}", field="outputs", valid=list(OUTPUTS))
    positions = _positions(model, method_name, layer)
    if "map" in outputs and images > MAX_MAP_VALUES // positions:
        raise InvalidRequest(f"outputs=map would return {images * positions} values ({images} maps of {positions} "
                             f"each); a request returns at most {MAX_MAP_VALUES}: send fewer files, or ask for the "
                             f"heatmap", field="outputs")


def check_overlay_sides(images: list[Image.Image], outputs: tuple[str, ...], overlay_format: str) -> None:
    """Whether `overlay_format` can hold the overlays of these decoded images."""
    if overlay_format not in IMAGE_FORMATS:
        raise InvalidRequest(f"unknown overlay_format {overlay_format!r}", field="overlay_format",
                             valid=list(IMAGE_FORMATS))
    longest = max(max(image.size) for image in images)
    if "overlay" in outputs and longest > MAX_SIDE[overlay_format]:
        raise InvalidRequest(f"an overlay in {overlay_format} can be at most {MAX_SIDE[overlay_format]} pixels on a "
                             f"side, and an image here is {longest}: ask for overlay_format=png (or Accept: image/png)",
                             field="overlay_format")


def explain(model: LoadedModel, images: list[Image.Image], method_name: str,
            targets: list[int] | None = None, layer: str | None = None,
            options: dict[str, object] | None = None, top_k: int = 5,
            outputs: tuple[str, ...] = ("heatmap", "overlay"), resize: str = "crop",
            faithfulness: bool = False, on_stage: OnStage = _ignore,
            overlay_format: str = "jpeg") -> list[ImageResult]:
    """`options`: the method's own (its `Options`); one it does not take is refused.
    `outputs`: `heatmap` (a grey PNG) and `overlay` (in `overlay_format`, see
    encoding.IMAGE_FORMATS) the decoded image's size, `map` the raw [0, 1] map at the explained
    layer's (or the input's) resolution. `resize`: see imaging.RESIZE_MODES.
    `faithfulness`: each map's deletion and insertion scores, on ONNX Runtime."""
    method, checked, layer = _plan(model, method_name, layer, options)
    _check_outputs(outputs, model, method_name, layer, len(images))
    check_overlay_sides(images, outputs, overlay_format)
    wanted = resolve_targets(targets, len(images), model.spec)
    started = time.perf_counter()
    batch, boxes = imaging.preprocess(images, model.spec, resize)
    preprocessed = time.perf_counter()
    result = _run_method(model, method_name, torch.from_numpy(batch), wanted, layer, checked)
    explained = time.perf_counter()
    maps, chosen = result.maps, result.targets.cpu().numpy()
    probs = probabilities(model, result.logits.float().cpu().numpy())
    if (index := _first_not_finite(maps)) is not None:
        raise _not_finite(index, f"its {method_name} map came out NaN or infinite, as model {model.spec.ref!r} "
                                 f"scored a perturbed copy of it (or its gradients) so", f"file.{index}")
    timings = {"preprocess": (preprocessed - started) * 1000, "model": (explained - preprocessed) * 1000}
    on_stage("preprocess", preprocessed - started)
    on_stage(f"explain:{method_name}", explained - preprocessed)
    scores: list[Faithfulness | None] = [None] * len(images)
    if faithfulness:
        scores = _faithfulness(model, batch, maps, chosen)
        timings["faithfulness"] = (time.perf_counter() - explained) * 1000
        on_stage("faithfulness", timings["faithfulness"] / 1000)
    predictions = top_predictions(probs, model.spec, top_k)

    def render(index: int) -> ImageResult:
        started = time.perf_counter()
        heatmap_png, overlay = _pictures(images[index], boxes[index], maps[index], outputs, overlay_format)
        target = int(chosen[index])
        return ImageResult(predictions[index], RenderedExplanation(
            method_name, Prediction(target, model.spec.labels[target], float(probs[index, target])),
            layer, heatmap_png, overlay, np.round(maps[index], 4).tolist() if "map" in outputs else None,
            {**timings, "render": (time.perf_counter() - started) * 1000}, scores[index],
            result.gates[index] if result.gates else None, overlay_format, _is_flat(maps[index]),
            boxes[index].rounded()))

    cancellation.check()  # batched with others, this request's own client may have gone meanwhile
    rendering = time.perf_counter()
    results = parallel_map(render, range(len(images)))
    on_stage("render", time.perf_counter() - rendering)
    return results


def _run_method(model: LoadedModel, method_name: str, inputs: torch.Tensor, wanted: torch.Tensor | None,
                layer: str | None, options: dict[str, object]) -> Explanation:
    spec, method = model.spec, METHODS[method_name]
    if method.takes_feature_source:
        # CAM from the ONNX Runtime forward that makes the prediction: no hooks, so no lock.
        return method(model.network, inputs, wanted, layer, classifier=spec.classifier_layer,
                      features=onnx_features(model))
    if from_feature_map(model, method_name, layer):
        # from the same forward's feature map, with no backward: no hooks, so no lock. Weighing
        # Lite0's 1280 x 7 x 7 map on torch's two threads took more CPU than the ONNX Runtime
        # forward (a Grad-CAM map request: 17.8 core-ms, 11.2 on this thread alone)
        with torch_on_this_thread():
            return at_classifier_layer(method, model.network, inputs, wanted, spec.classifier_layer,
                                       onnx_features(model))
    if method.model_agnostic:
        # Scored on ONNX Runtime (batched with other requests) with no hooks: no lock.
        return method(model.network, inputs, wanted, layer, score=onnx_scorer(model), input_mean=spec.mean,
                      input_std=spec.std, **options)
    targets = wanted if wanted is not None else torch.full((len(inputs),), TOP_CLASS, dtype=torch.long)
    long = _cost_per_image(model, method, options, layer) > LONG_COST
    key = (method_name, layer, json.dumps(options, sort_keys=True), long)
    runs, step = torch_runs(model), torch_images_per_run(model)
    return joined([runs(key, (inputs[start:start + step], targets[start:start + step]), len(inputs[start:start + step]))
                   for start in range(0, len(inputs), step)])


def from_feature_map(model: LoadedModel, method_name: str, layer: str | None) -> bool:
    """Whether this gradient CAM method (Grad-CAM, Grad-CAM++, LayerCAM) is computed from the
    ONNX Runtime forward's feature map, with no torch (core.explain.cam.at_classifier_layer): at
    the layer that feeds global average pooling and a linear classifier (checked when the model
    loads: `cam` is among its methods), where its gradients are known without a backward pass."""
    return (METHODS[method_name].from_activations_and_gradients and "cam" in model.methods
            and layer == model.spec.cam_layer)


# Per image, in forward-equivalents: above it a method pauses between chunks for shorter work.
LONG_COST = 8


# A forward and backward on torch holds about 80 MB per 224 x 224 image (Lite0, saliency: one
# request of 64 images took 5.2 GB), so a run takes at most this many input pixels: 16 such images.
TORCH_RUN_PIXELS = 16 * 224 * 224


def torch_images_per_run(model: LoadedModel) -> int:
    """The most images one torch run takes (a larger request runs in parts): GAZER_MAX_BATCH,
    fewer for large inputs, at least one."""
    return max(1, min(model.batching.max_batch, TORCH_RUN_PIXELS // model.spec.input_size ** 2))


def torch_runs(model: LoadedModel) -> Batcher:
    """The model's gradient explanations: requests with the same method, layer and options run
    as one batch (each image keeps its own target); long ones pause for short ones."""
    return model.batcher("torch", lambda key, payloads: _torch_batch(model, key, payloads),
                         is_long=lambda key: key[3], max_batch=torch_images_per_run(model))


def joined(parts: list[Explanation]) -> Explanation:
    """One request's explanation from the runs of its parts, in order."""
    if len(parts) == 1:
        return parts[0]
    gates = [gate for part in parts for gate in part.gates] if parts[0].gates is not None else None
    return Explanation(np.concatenate([part.maps for part in parts]), torch.cat([part.logits for part in parts]),
                       torch.cat([part.targets for part in parts]), gates)


def _torch_batch(model: LoadedModel, key: tuple, payloads: list[tuple[torch.Tensor, torch.Tensor]]) -> list[Explanation]:
    method_name, layer, options, _ = key
    method, spec = METHODS[method_name], model.spec
    inputs, targets = torch.cat([inputs for inputs, _ in payloads]), torch.cat([targets for _, targets in payloads])
    extra: dict[str, object] = {}
    if method.scores_masked_inputs and model.device.type == "cpu":  # measured faster on CPU only
        extra["score"] = onnx_scorer(model)
    # bfloat16, when asked, only where it keeps the map (within 0.05 for the CAM family; input
    # gradients lose too much: tests/unit/test_gpu_paths.py)
    faster = fast_math(model.device, model.bfloat16) if isinstance(method, LayerMethod) and method.needs_gradients \
        else nullcontext()
    with model.lock, faster:
        checking = model.network.register_forward_pre_hook(lambda module, args: cancellation.check())
        try:
            result = method(model.network, fast_layout(inputs.to(model.device)), targets, layer,
                            input_mean=spec.mean, input_std=spec.std, classifier=spec.classifier_layer,
                            **json.loads(options), **extra)
        finally:
            checking.remove()
    ends = np.cumsum([len(inputs) for inputs, _ in payloads])[:-1].tolist()
    return [Explanation(maps, logits, chosen, result.gates[start:start + len(maps)] if result.gates else None)
            for start, maps, logits, chosen in
            zip([0, *ends], np.split(result.maps, ends), torch.tensor_split(result.logits, ends),
                torch.tensor_split(result.targets, ends))]


def _faithfulness(model: LoadedModel, batch: np.ndarray, maps: np.ndarray,
                  chosen: np.ndarray) -> list[Faithfulness | None]:
    """None for a flat map: it ranks no pixel above another, so its scores would measure the
    order pixels are stored in."""
    score, inputs = onnx_scorer(model), torch.from_numpy(batch)
    scores: list[Faithfulness | None] = []
    for index in range(len(maps)):
        if _is_flat(maps[index]):
            scores.append(None)
            continue
        measured = deletion_and_insertion(score, inputs[index], maps[index], int(chosen[index]), model.spec.mean,
                                          model.spec.std)
        if not math.isfinite(measured.deletion + measured.insertion):
            raise _not_finite(index, f"model {model.spec.ref!r} scored a masked copy of it NaN or infinite, so "
                                     f"its faithfulness cannot be measured", "faithfulness")
        scores.append(measured)
    return scores


def _is_flat(saliency: np.ndarray) -> bool:
    """One value everywhere (maps are min-max scaled, so all zeros)."""
    return not saliency.max() > 0


def _pictures(image: Image.Image, box: imaging.CropBox, saliency: np.ndarray,
              outputs: tuple[str, ...], overlay_format: str) -> tuple[bytes | None, bytes | None]:
    """The heatmap PNG and the overlay in `overlay_format`, where `outputs` asks for them."""
    if "heatmap" not in outputs and "overlay" not in outputs:
        return None, None
    heat = imaging.place_heatmap(saliency, box, image.width, image.height)
    # compact (1 ms more for 512 x 512, 15 KB instead of 22) where it shares the answer with
    # an overlay, which keeps the default answer under 100 KB; alone, the faster one
    encoders = {"heatmap": lambda: encode_png(heat, compact="overlay" in outputs),
                "overlay": lambda: encode_image(imaging.overlay(image, heat, box), overlay_format)}
    wanted = [name for name in encoders if name in outputs]
    files = dict(zip(wanted, parallel_map(lambda name: encoders[name](), wanted)))  # on two cores, at once
    return files.get("heatmap"), files.get("overlay")


def onnx_scorer(model: LoadedModel) -> Callable[[torch.Tensor], torch.Tensor]:
    """Logits of a batch from the model's ONNX Runtime session, for methods that only score."""
    def score(inputs: torch.Tensor) -> torch.Tensor:
        cancellation.check()
        logits = onnx_run(model, ("logits",), inputs.detach().float().cpu().numpy())[0]
        return torch.from_numpy(logits).to(inputs.device)
    return score


def onnx_features(model: LoadedModel) -> FeatureSource:
    """Logits and the last feature map from the model's ONNX Runtime session (for CAM)."""
    def forward(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cancellation.check()
        logits, features = onnx_run(model, ("logits", "features"), inputs.numpy())
        return torch.from_numpy(logits), torch.from_numpy(features)
    return forward
