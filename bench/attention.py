"""What attention modules cost and whether they help, on EfficientNet-Lite0.

  python -m bench.attention [--seeds 3] [--epochs 5] [--input-size 224] [--cost-only]

1. Parameters, FLOPs (torch's FlopCounterMode, multiply-add = 2) and CPU latency per
   prediction (ONNX Runtime, batch 1, 224 px, alternating rounds) added by each module
   placed after the last feature stage.
2. Validation accuracy on the four Tuxpaint classes (see bench.fine_tuning) with and without
   each attention type, same budget, several seeds: mean and spread.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import ignore_progress, interleaved, report
from bench.fine_tuning import tuxpaint_archive
from core.datasets import dataset_images, ingest_archive
from core.models.architectures import build_network
from core.models.catalog import load_builtin
from core.models.onnx_export import export_onnx
from core.runtime.onnx_predictor import OnnxPredictor
from core.training.config import FineTuneConfig
from core.training.finetune import fine_tune, transfer_backbone
from infra.settings import SharedSettings

KINDS = ("none", "se", "spatial", "cbam")


def costs() -> None:
    spec, base = load_builtin("efficientnet_lite0")
    example = torch.zeros(1, 3, 224, 224)
    folder = Path(tempfile.mkdtemp(prefix="gazer-bench-"))
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
    datasets_dir = Path(tempfile.mkdtemp(prefix="gazer-bench-"))
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--cost-only", action="store_true")
    args = parser.parse_args()
    costs()
    if not args.cost_only:
        accuracy(args.seeds, args.epochs, args.input_size)


if __name__ == "__main__":
    main()
