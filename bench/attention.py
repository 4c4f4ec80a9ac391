"""What attention modules cost, whether they help, and whether their maps point at the evidence,
on EfficientNet-Lite0.

  python -m bench.attention [--seeds 3] [--epochs 5] [--input-size 224] [--cost-only]
  python -m bench.attention --localization-only [--epochs 3] [--sets synthetic,tuxpaint]
                            [--variants sigmoid,residual,residual-stride16]

1. Parameters, FLOPs (torch's FlopCounterMode, multiply-add = 2) and CPU latency per
   prediction (ONNX Runtime, batch 1, 224 px, alternating rounds) added by each module
   placed after the last feature stage.
2. Validation accuracy on the four Tuxpaint classes (see bench.fine_tuning) with and without
   each attention type, same budget, several seeds: mean and spread.
3. Localization: CBAM fine-tunes on (a) a synthetic set whose class evidence always lies in the
   left half of the crop, on noise, with a shape of a random class in the right half, and (b)
   the Tuxpaint stamps, whose evidence is the stamp (its opaque pixels). On the same model and
   the same held-out images: the share of each map's mass (upsampled to the input) that lies
   on the evidence, for the attention map(s), Grad-CAM and CAM, next to the evidence's share of
   the area; the raw gate's mean on the evidence over its mean elsewhere; accuracy.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import ignore_progress, interleaved, report, scratch_dir
from bench.fine_tuning import tuxpaint_archive
from core import imaging
from core.attention import spatial_gates
from core.datasets import dataset_images, ingest_archive
from core.models.architectures import build_network
from core.models.catalog import load_builtin
from core.models.onnx_export import export_onnx
from core.explain import METHODS
from core.runtime.onnx_predictor import OnnxPredictor
from core.training import data
from core.training.config import Augmentation, FineTuneConfig
from core.training.finetune import fine_tune, transfer_backbone
from infra.settings import SharedSettings
from support import SHAPE_CLASSES, evidence_left_archive, evidence_left_image

KINDS = ("none", "se", "spatial", "cbam")


def costs() -> None:
    spec, base = load_builtin("efficientnet_lite0")
    example = torch.zeros(1, 3, 224, 224)
    folder = scratch_dir()
    measured, runners = {}, {}
    for kind in KINDS:
        network = build_network("efficientnet_lite0", 1000, 224, attention=kind).eval()
        transfer_backbone(base, network)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            network(example)
        params = sum(p.numel() for p in network.parameters())
        export_onnx(network, 224, folder / f"{kind}.onnx")
        predictor = OnnxPredictor(folder / f"{kind}.onnx")
        batch = np.zeros((1, 3, 224, 224), dtype=np.float32)
        runners[kind] = lambda predictor=predictor, batch=batch: predictor.logits(batch)
        measured[kind] = (params, counter.get_total_flops())
    latency = interleaved(runners, rounds=9, per_round=20)
    base_params, base_flops = measured["none"]
    rows = []
    for kind in KINDS:
        params, flops = measured[kind]
        rows.append((kind, f"+{params - base_params:>7,d} params  +{(flops - base_flops) / 1e6:7.2f} MFLOPs  "
                           f"latency {latency[kind]:.2f} ms ({latency[kind] / latency['none']:.3f}x)"))
    report(f"attention after the last stage of EfficientNet-Lite0 (base {base_params:,d} params, "
           f"{base_flops / 1e9:.2f} GFLOPs)", rows)


def accuracy(seeds: int, epochs: int, input_size: int) -> None:
    datasets_dir = scratch_dir()
    dataset = ingest_archive(tuxpaint_archive(), datasets_dir, "tuxpaint4", SharedSettings().archive_limits)
    classes, items = dataset_images(datasets_dir, dataset["id"])
    spec, base = load_builtin("efficientnet_lite0")
    rows = []
    for kind in KINDS:
        scores = []
        started = time.perf_counter()
        for seed in range(seeds):
            config = FineTuneConfig(base_model="efficientnet_lite0", dataset_id=dataset["id"], output_model="bench",
                                    strategy="fine_tune", epochs=epochs, batch_size=16, input_size=input_size,
                                    early_stopping_patience=epochs, seed=seed, attention=kind)
            scores.append(fine_tune(config, spec, base, classes, items, ignore_progress, lambda: False,
                                    torch.device("cpu"), SharedSettings().max_image_pixels).metrics["val_accuracy"])
        spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
        rows.append((kind, f"val accuracy {statistics.mean(scores):.3f} +- {spread:.3f} "
                           f"({', '.join(f'{s:.3f}' for s in scores)}) in {time.perf_counter() - started:.0f} s"))
    report(f"fine_tune, {epochs} epochs, {input_size} px, seeds 0..{seeds - 1}, 4 Tuxpaint classes", rows)

LOCALIZATION_SIZE = 128   # input size of the localization fine-tunes (the top gate map is 4 x 4)
LOCALIZATION_VARIANTS = {  # the sigmoid gate is the form every attention model had before the residual one
    "sigmoid": {"attention": "cbam", "attention_gate": "sigmoid"},
    "residual": {"attention": "cbam", "attention_gate": "residual"},
    "residual-stride16": {"attention": "cbam", "attention_gate": "residual", "attention_stride": 16},
}


def _evidence_mask_synthetic(middle: int, image_size: int, input_size: int) -> np.ndarray:
    """The left half of the centre crop, at input resolution."""
    crop_left = (image_size - image_size * input_size / (input_size + 32)) / 2
    column = round((middle - crop_left) * input_size / (image_size - 2 * crop_left))
    mask = np.zeros((input_size, input_size), dtype=bool)
    mask[:, :column] = True
    return mask


def _evidence_mask_stamp(path: Path, spec) -> np.ndarray:
    """The stamp's opaque pixels, through the same resize and crop as the image."""
    from PIL import Image

    alpha = Image.open(path).convert("RGBA").getchannel("A")
    batch, _ = imaging.preprocess([Image.merge("RGB", (alpha, alpha, alpha))], spec)
    return batch[0, 0] * spec.std[0] + spec.mean[0] > 127


def _maps(network, spec, inputs: torch.Tensor) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Each method's [0, 1] maps (and, for attention, the raw gates) upsampled to the input."""
    size = inputs.shape[-1]
    named = dict(network.named_modules())
    found = {}
    for method, layers in (("gradcam", [spec.cam_layer]), ("cam", [spec.cam_layer]),
                           ("attention", spatial_gates(network))):
        for layer in layers:
            raw: list[torch.Tensor] = []
            handle = named[layer].register_forward_hook(lambda m, i, o: raw.append(o.detach()))
            try:
                explanation = METHODS[method](network, inputs, None, layer, classifier=spec.classifier_layer,
                                              input_mean=spec.mean, input_std=spec.std)
            finally:
                handle.remove()

            def upsample(maps: torch.Tensor) -> np.ndarray:
                return torch.nn.functional.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear",
                                                       align_corners=False)[:, 0].numpy()
            name = method if method != "attention" else f"attention {layer.removeprefix('attention.')}"
            gates = upsample(raw[0][:, 0]) if method == "attention" else None
            found[name] = (upsample(torch.from_numpy(explanation.maps)), gates)
    return found


def _localization_rows(network, spec, inputs: torch.Tensor, masks: np.ndarray) -> list[tuple[str, str]]:
    rows = [("evidence area", f"{masks.mean():.3f} of the crop")]
    for name, (maps, gates) in _maps(network, spec, inputs).items():
        totals = maps.sum(axis=(1, 2))
        shown = totals > 0
        mass = (maps * masks).sum(axis=(1, 2))[shown] / totals[shown]
        line = f"mass on evidence {mass.mean():.3f} (min {mass.min():.3f})" if shown.any() else "every map empty"
        if gates is not None:
            inside = np.array([gate[mask].mean() for gate, mask in zip(gates, masks)])
            outside = np.array([gate[~mask].mean() for gate, mask in zip(gates, masks)])
            spread = gates.reshape(len(gates), -1)
            line += (f"; raw gate {spread.min():.3f}..{spread.max():.3f}, mean on evidence / elsewhere "
                     f"{np.mean(inside / outside):.3f}; per-image range (max - min) median "
                     f"{np.median(spread.max(axis=1) - spread.min(axis=1)):.3f}")
        rows.append((name, line))
    return rows


def _fine_tune_for_localization(datasets_dir: Path, dataset_id: str, variant: dict, epochs: int,
                                augmentation: Augmentation | None = None):
    classes, items = dataset_images(datasets_dir, dataset_id)
    spec, base = load_builtin("efficientnet_lite0")
    config = FineTuneConfig(base_model="efficientnet_lite0", dataset_id=dataset_id, output_model="bench",
                            strategy="fine_tune", epochs=epochs, batch_size=16, input_size=LOCALIZATION_SIZE,
                            lr=0.01, backbone_lr=0.001, early_stopping_patience=epochs, seed=1,
                            augmentation=augmentation or Augmentation(), **variant)
    started = time.perf_counter()
    result = fine_tune(config, spec, base, classes, items, ignore_progress, lambda: False, torch.device("cpu"),
                       SharedSettings().max_image_pixels)
    return config, result, items, time.perf_counter() - started


def _accuracy_row(result, seconds: float, extra: str = "") -> tuple[str, str]:
    history = [round(epoch["val_accuracy"], 2) for epoch in result.metrics["history"]]
    return ("accuracy", f"val {result.metrics['val_accuracy']:.3f} (per epoch {history}){extra}; "
                        f"fine-tune {seconds:.0f} s")


def localization_synthetic(epochs: int, variants: list[str]) -> None:
    datasets_dir = scratch_dir()
    image_size = LOCALIZATION_SIZE + 32
    dataset = ingest_archive(evidence_left_archive(20, seed=0, size=image_size, input_size=LOCALIZATION_SIZE),
                             datasets_dir, "evidence-left", SharedSettings().archive_limits)
    rng = np.random.default_rng(2024)
    kinds = [SHAPE_CLASSES[index % len(SHAPE_CLASSES)] for index in range(30)]
    cases = [evidence_left_image(kind, rng, image_size, LOCALIZATION_SIZE) for kind in kinds]
    # no flips (they would move the evidence to the right half), no geometry changes
    still = Augmentation(flip=False, rotation=0, zoom=0, shear=0, color_jitter=0.05)
    for name in variants:
        variant = LOCALIZATION_VARIANTS[name]
        config, result, _, seconds = _fine_tune_for_localization(datasets_dir, dataset["id"], variant, epochs, still)
        inputs = torch.from_numpy(imaging.preprocess([image for image, _ in cases], result.spec)[0])
        masks = np.stack([_evidence_mask_synthetic(middle, image_size, LOCALIZATION_SIZE) for _, middle in cases])
        with torch.no_grad():
            predicted = result.network(inputs).argmax(dim=1).tolist()
        right = sum(result.spec.labels[p] == kind for p, kind in zip(predicted, kinds))
        rows = [_accuracy_row(result, seconds, f", {right}/{len(kinds)} held-out images right")]
        report(f"localization, evidence in the left half (cbam, {name} gate), fine_tune {epochs} epochs, "
               f"{LOCALIZATION_SIZE} px, 60 training images, {len(kinds)} held-out",
               rows + _localization_rows(result.network, result.spec, inputs, masks))


def localization_tuxpaint(epochs: int, variants: list[str]) -> None:
    datasets_dir = scratch_dir()
    dataset = ingest_archive(tuxpaint_archive(), datasets_dir, "tuxpaint4", SharedSettings().archive_limits)
    for name in variants:
        variant = LOCALIZATION_VARIANTS[name]
        config, result, items, seconds = _fine_tune_for_localization(datasets_dir, dataset["id"], variant, epochs)
        _, held_out = data.stratified_split(items, config.val_fraction, config.seed)
        images = [imaging.decode_image(path.read_bytes(), SharedSettings().max_image_pixels) for path, _ in held_out]
        inputs = torch.from_numpy(imaging.preprocess(images, result.spec)[0])
        masks = np.stack([_evidence_mask_stamp(path, result.spec) for path, _ in held_out])
        report(f"localization on the Tuxpaint stamps (cbam, {name} gate), fine_tune {epochs} epochs, "
               f"{LOCALIZATION_SIZE} px, {len(held_out)} validation images, evidence = the stamp",
               [_accuracy_row(result, seconds)] + _localization_rows(result.network, result.spec, inputs, masks))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--cost-only", action="store_true")
    parser.add_argument("--localization-only", action="store_true")
    parser.add_argument("--sets", default="synthetic,tuxpaint", help="localization sets")
    parser.add_argument("--variants", default=",".join(LOCALIZATION_VARIANTS),
                        help=f"localization fine-tunes, of {', '.join(LOCALIZATION_VARIANTS)}")
    args = parser.parse_args()
    variants = [name for name in args.variants.split(",") if name]
    sets = {"synthetic": localization_synthetic, "tuxpaint": localization_tuxpaint}
    if not args.localization_only:
        costs()
        if args.cost_only:
            return
        accuracy(args.seeds, args.epochs, args.input_size)
    for name in args.sets.split(","):
        sets[name](3 if not args.localization_only else args.epochs, variants)


if __name__ == "__main__":
    main()
