"""The report of a fine-tune: what the model got wrong on the validation images and where it
looks, computed batched on the trained network once training ends.

- the mistakes, most confident first, each with its image (the model's centre crop), the true
  and the predicted class with their probabilities, and Grad-CAM overlays for both classes;
- per class, the mean Grad-CAM map over the correctly classified validation images;
- per class, the background-reliance score: the share of the map's mass outside the centred box
  that covers half the image's area (sides sqrt(0.5) of the image's), averaged over the class's
  correctly classified images. A uniform map scores 0.5; a class scoring above
  BACKGROUND_WARNING finds more of its evidence near the border than inside: a warning sign of
  a shortcut (a watermark, a frame, a border colour). It is flagged when its images show it
  beyond chance (`beyond_warning`): one image at 0.51 is no evidence.

The score is taken with SCORE_METHOD at `score_layer`, the last block at twice the CAM layer's
resolution or more: a 7x7 map's outer ring alone covers 49% of the image, and there Grad-CAM
scored a class whose only evidence was a patch at the border below 0.5
(tests/unit/test_fine_tune_report.py). The CAM layer's Grad-CAM score is reported beside it.
"""

from __future__ import annotations

import copy
import json
import math
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from core import imaging
from core.explain import METHODS
from core.explain.base import capture, normalize_maps, target_score
from core.jobs import JobCancelled, Progress, ShouldStop
from core.models.layers import trace
from core.models.spec import ModelSpec
from core.png import encode_png
from core.training import data
from core.training.config import FineTuneConfig
from core.training.data import Normalizer

CENTRAL_SIDE = math.sqrt(0.5)     # the central box's sides, as a share of the image's: half its area
BACKGROUND_WARNING = 0.5          # more evidence outside the central half than inside it
FLAG_MIN_IMAGES = 3               # a class is flagged on at least this many images' scores
FLAG_CONFIDENCE = 0.95            # ... when their mean is above the warning with this confidence
MAX_MISTAKE_PICTURES = 64         # mistakes beyond these (the least confident) are listed without pictures
REPORT_FILE = "report.json"
# The background-reliance score's explainer: LayerCAM (Jiang et al. 2021) weighs each location
# by its own gradient, which keeps a finer layer's maps from spreading over the image as Grad-CAM's
# do (see bench/report.py and the README's measurements).
SCORE_METHOD = "layercam"


def central_mask(size: int) -> torch.Tensor:
    """(size, size) bool: True inside the centred box covering half the area."""
    side = round(size * CENTRAL_SIDE)
    start = (size - side) // 2
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[start:start + side, start:start + side] = True
    return mask


def background_reliance(maps: np.ndarray | torch.Tensor, size: int) -> np.ndarray:
    """Per map, the share of its mass outside the central box, the map bilinearly upsampled to
    the input's size first (as it is drawn); NaN for an all-zero map."""
    upsampled = F.interpolate(torch.as_tensor(np.asarray(maps), dtype=torch.float32)[:, None], size=(size, size),
                              mode="bilinear", align_corners=False)[:, 0].clamp(min=0)
    total = upsampled.sum(dim=(1, 2))
    outside = upsampled.masked_fill(central_mask(size), 0).sum(dim=(1, 2))
    return torch.where(total > 0, outside / total.clamp(min=1e-12), torch.nan).numpy()


def score_layer(network: nn.Module, spec: ModelSpec) -> str:
    """The last backbone block whose map is at least twice as fine as the CAM layer's (14x14
    for EfficientNet-Lite's 7x7 `head`: blocks.10), else the CAM layer itself."""
    runs = trace(network, spec.input_size)
    cam_side = runs[spec.cam_layer].shape[-1]
    finer = [name for name in network.anatomy.blocks
             if name in runs and runs[name].calls == 1 and runs[name].shape is not None
             and len(runs[name].shape) == 4 and runs[name].shape[-1] >= 2 * cam_side]
    return finer[-1] if finer else spec.cam_layer


def _cam(method: str, activations: torch.Tensor, gradients: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    return normalize_maps(torch.relu(METHODS[method].combine(None, None, activations, gradients, targets)))


@dataclass
class _Maps:
    logits: torch.Tensor
    predicted: np.ndarray            # Grad-CAM at the CAM layer for each image's predicted class
    true: np.ndarray | None          # ... for its true class, where they differ (None: no mistakes)
    score: np.ndarray                # SCORE_METHOD at the score layer for the predicted class


def gradcam_maps(network: nn.Module, inputs: torch.Tensor, truth: torch.Tensor, cam_layer: str,
                 layer: str) -> _Maps:
    """What the report needs of a batch from one forward pass: both layers captured, one
    backward from the predicted classes (to the lower layer only) and, where some image is
    mistaken, one more from the true classes to the CAM layer. The maps are those of the
    Grad-CAM explainer at the CAM layer and of SCORE_METHOD's at `layer`."""
    with ExitStack() as stack, torch.no_grad():
        lower = stack.enter_context(capture(network, layer, start_grad_here=True))
        cam = lower if layer == cam_layer else stack.enter_context(capture(network, cam_layer))
        logits = network(inputs)
        predicted = logits.argmax(dim=1)
        truth = truth.to(logits.device)
        mistaken = bool((predicted != truth).any())
        layers = [cam.activation] if layer == cam_layer else [cam.activation, lower.activation]
        gradients = torch.autograd.grad(target_score(logits, predicted), layers, retain_graph=mistaken)
        true_gradients = torch.autograd.grad(target_score(logits, truth), cam.activation)[0] if mistaken else None
    predicted_maps = _cam("gradcam", cam.activation.detach(), gradients[0], predicted)
    lower_gradients = gradients[0] if layer == cam_layer else gradients[1]
    return _Maps(logits.detach(), predicted_maps,
                 _cam("gradcam", cam.activation.detach(), true_gradients, truth) if mistaken else None,
                 _cam(SCORE_METHOD, lower.activation.detach(), lower_gradients, predicted))


@dataclass
class _Running:
    """What the batches add up to."""

    mistakes: list[dict] = field(default_factory=list)
    map_sums: dict[int, np.ndarray] = field(default_factory=dict)
    reliance: dict[int, list[float]] = field(default_factory=dict)
    cam_reliance: dict[int, list[float]] = field(default_factory=dict)


@dataclass
class Report:
    document: dict                              # report.json
    pictures: dict[str, bytes]                  # artifact name -> PNG
    seconds: float


def fine_tune_report(network: nn.Module, spec: ModelSpec, pixels: torch.Tensor, labels: torch.Tensor,
                     files: list[str], batch_size: int, device: torch.device, progress: Progress,
                     should_stop: ShouldStop, layer: str | None = None) -> Report:
    """`pixels`: the validation images as uint8 squares (core.training.data.load_squares), `files`
    their names; `network` in eval mode on `device`. `layer`: where the background-reliance
    score is taken (default `score_layer`). Raises JobCancelled when should_stop() says so."""
    started = time.perf_counter()
    normalize = Normalizer(spec)
    layer = layer or score_layer(network, spec)
    running = _Running()
    count = len(labels)
    progress(0.0, phase="report", images=0, total=count)  # the phase shows while the first batch runs
    for start in range(0, count, batch_size):
        if should_stop():
            raise JobCancelled()
        inputs = normalize(pixels[start:start + batch_size]).to(device)
        truth = labels[start:start + batch_size]
        _add_batch(network, inputs, truth, start, spec, layer, running)
        progress(min(start + batch_size, count) / max(count, 1), phase="report", images=min(start + batch_size, count),
                 total=count)
    document, pictures = _document(spec, layer, running, centre_crops(pixels, spec.input_size), labels, files)
    return Report(document, pictures, time.perf_counter() - started)


def centre_crops(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """The model's centre crops of the uint8 squares: (N, 3, S, S)."""
    margin = (pixels.shape[-1] - size) // 2
    return pixels[..., margin:margin + size, margin:margin + size]


def validation_report(config: FineTuneConfig, spec: ModelSpec, network: nn.Module, items: list[tuple[Path, int]],
                      max_pixels: int, device: torch.device, progress: Progress, should_stop: ShouldStop) -> Report:
    """The report on the validation split that `config` made of `items` (the same split, by its
    seed), on a copy of the trained `network` moved to `device`; its time includes loading the images."""
    started = time.perf_counter()
    _, val_items = data.stratified_split(items, config.val_fraction, config.seed)
    pixels, labels = data.load_squares(val_items, spec, max_pixels, should_stop)
    copy_on_device = copy.deepcopy(network).to(device).eval()
    report = fine_tune_report(copy_on_device, spec, pixels, labels, [f"{path.parent.name}/{path.name}"
                                                                    for path, _ in val_items],
                              config.batch_size, device, progress, should_stop)
    report.seconds = time.perf_counter() - started
    return report


def _add_batch(network: nn.Module, inputs: torch.Tensor, truth: torch.Tensor, offset: int, spec: ModelSpec,
               layer: str, running: _Running) -> None:
    maps = gradcam_maps(network, inputs, truth, spec.cam_layer, layer)
    probabilities = torch.softmax(maps.logits.float(), dim=1).cpu().numpy()
    chosen = maps.logits.argmax(dim=1).cpu().numpy()
    truth = truth.numpy()
    for index in np.flatnonzero(chosen != truth):
        running.mistakes.append({"index": offset + int(index), "true": int(truth[index]),
                                 "predicted": int(chosen[index]), "map_predicted": maps.predicted[index],
                                 "map_true": maps.true[index], "probabilities": probabilities[index]})
    right = np.flatnonzero(chosen == truth)
    if not len(right):
        return
    scores = background_reliance(maps.score[right], spec.input_size)
    cam_scores = background_reliance(maps.predicted[right], spec.input_size)
    for position, index in enumerate(right):
        label = int(truth[index])
        running.map_sums[label] = running.map_sums.get(label, 0) + maps.predicted[index].astype(np.float64)
        running.reliance.setdefault(label, []).append(float(scores[position]))
        running.cam_reliance.setdefault(label, []).append(float(cam_scores[position]))


def beyond_warning(scores: list[float]) -> bool:
    """Whether a class's background-reliance scores put its mean above BACKGROUND_WARNING beyond
    chance: FLAG_MIN_IMAGES scores or more, and the lower end of the mean's one-sided
    FLAG_CONFIDENCE interval (Student's t) above the line."""
    from scipy import stats  # here: scipy.stats takes 0.75 s to import, and the API imports this module

    kept = np.array([score for score in scores if not math.isnan(score)])
    if len(kept) < FLAG_MIN_IMAGES:
        return False
    margin = stats.t.ppf(FLAG_CONFIDENCE, len(kept) - 1) * kept.std(ddof=1) / math.sqrt(len(kept))
    return bool(kept.mean() - margin > BACKGROUND_WARNING)


def _mean(values: list[float]) -> float | None:
    kept = [value for value in values if not math.isnan(value)]
    return round(float(np.mean(kept)), 4) if kept else None


def _class(index: int, spec: ModelSpec, probabilities: np.ndarray) -> dict:
    return {"index": index, "label": spec.labels[index], "probability": round(float(probabilities[index]), 4)}


def _heat(saliency: np.ndarray, size: int) -> np.ndarray:
    return imaging.place_heatmap(saliency, imaging.CropBox(0.0, 0.0, float(size), float(size)), size, size)


def _overlay(crop: np.ndarray, saliency: np.ndarray) -> bytes:
    size = crop.shape[0]
    return encode_png(imaging.overlay(Image.fromarray(crop), _heat(saliency, size),
                                      imaging.CropBox(0.0, 0.0, float(size), float(size))))


def _document(spec: ModelSpec, layer: str, running: _Running, crops: torch.Tensor, labels: torch.Tensor,
              files: list[str]) -> tuple[dict, dict[str, bytes]]:
    pictures: dict[str, bytes] = {}
    mistakes = sorted(running.mistakes, key=lambda m: -float(m["probabilities"][m["predicted"]]))
    listed = []
    for rank, mistake in enumerate(mistakes):
        entry = {"file": files[mistake["index"]], "true": _class(mistake["true"], spec, mistake["probabilities"]),
                 "predicted": _class(mistake["predicted"], spec, mistake["probabilities"])}
        if rank < MAX_MISTAKE_PICTURES:
            crop = np.ascontiguousarray(crops[mistake["index"]].numpy().transpose(1, 2, 0))
            names = {"image": f"report-mistake-{rank}.png", "gradcam_predicted": f"report-mistake-{rank}-predicted.png",
                     "gradcam_true": f"report-mistake-{rank}-true.png"}
            pictures[names["image"]] = encode_png(crop)
            pictures[names["gradcam_predicted"]] = _overlay(crop, mistake["map_predicted"])
            pictures[names["gradcam_true"]] = _overlay(crop, mistake["map_true"])
            entry["pictures"] = names
        listed.append(entry)
    classes = []
    for index, label in enumerate(spec.labels):
        correct = len(running.reliance.get(index, []))
        entry = {"index": index, "label": label, "images": int((labels == index).sum()), "correct": correct,
                 "background_reliance": _mean(running.reliance.get(index, [])),
                 "background_reliance_cam_layer": _mean(running.cam_reliance.get(index, []))}
        if correct:
            mean_map = running.map_sums[index] / correct
            name = f"report-class-{index}-mean-gradcam.png"
            pictures[name] = encode_png(imaging.JET[_heat(mean_map, spec.input_size)])
            entry["mean_gradcam"] = {"picture": name, "map": np.round(mean_map, 4).tolist()}
        classes.append(entry)
    flagged = [label for index, label in enumerate(spec.labels) if beyond_warning(running.reliance.get(index, []))]
    document = {"method": "gradcam", "cam_layer": spec.cam_layer, "score_method": SCORE_METHOD,
                "score_layer": layer, "central_box_side": round(CENTRAL_SIDE, 4),
                "background_warning": BACKGROUND_WARNING,
                "validation_images": len(labels), "mistakes": listed, "classes": classes,
                "background_reliance_flagged": flagged}
    return document, pictures


def write_report(report: Report, folder: Path, url: Callable[[str], str]) -> dict:
    """The report's files in `folder` (artifact names), with their URLs; the summary that the
    job's result carries."""
    folder.mkdir(parents=True, exist_ok=True)
    document = _with_urls(report.document, url)
    for name, png in report.pictures.items():
        (folder / name).write_bytes(png)
    (folder / REPORT_FILE).write_text(json.dumps(document))
    return {"url": url(REPORT_FILE), "mistakes": len(document["mistakes"]), "score_method": SCORE_METHOD,
            "score_layer": document["score_layer"],
            "background_reliance": {entry["label"]: entry["background_reliance"] for entry in document["classes"]},
            "background_reliance_flagged": document["background_reliance_flagged"],
            "seconds": round(report.seconds, 3)}


def _with_urls(document: dict, url: Callable[[str], str]) -> dict:
    for mistake in document["mistakes"]:
        if "pictures" in mistake:
            mistake["pictures"] = {kind: url(name) for kind, name in mistake["pictures"].items()}
    for entry in document["classes"]:
        if "mean_gradcam" in entry:
            entry["mean_gradcam"]["picture"] = url(entry["mean_gradcam"]["picture"])
    return document
