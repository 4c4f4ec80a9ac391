"""Fine-tuning EfficientNet-Lite0 on real photos: four Tuxpaint stamp classes (Debian
`tuxpaint-stamps-default`: mammals, birds, fruit, vehicles), 80/20 split.

  python -m bench.fine_tuning [--epochs 6] [--strategies fine_tune,...] [--throughput-only]

Prints validation accuracy and wall time per strategy, then the training throughput of the
fine-tuning loop against a plain PyTorch loop on the same model, trainable layers, batch
size and device, measured in alternating rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from bench.common import ignore_progress, report, scratch_dir
from core.datasets import dataset_images, ingest_archive
from core.models.catalog import load_builtin
from core.training.config import STRATEGIES, Augmentation, FineTuneConfig
from core.training.finetune import fine_tune, head_modules, set_trainable, trainable_backbone, transfer_backbone
from core.models.architectures import build_network
from infra.settings import SharedSettings

STAMPS = Path("/usr/share/tuxpaint/stamps")
CLASSES = {"mammals": "animals/mammals", "birds": "animals/birds", "fruit": "food/fruit", "vehicles": "vehicles"}


def tuxpaint_archive() -> bytes:
    import io
    import zipfile

    if not STAMPS.exists():
        raise SystemExit("install Debian's tuxpaint-stamps-default first (apt-get install tuxpaint-stamps-default)")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for label, folder in CLASSES.items():
            for path in sorted((STAMPS / folder).rglob("*.png")):
                if "_mirror" in path.stem or "thumb" in path.stem:
                    continue
                archive.writestr(f"{label}/{path.parent.name}-{path.name}", path.read_bytes())
    return buffer.getvalue()


def plain_loop_images_per_second(config: FineTuneConfig, steps: int) -> float:
    """The same network and trainable layers, trained on random tensors: no data pipeline."""
    spec, base = load_builtin(config.base_model)
    network = build_network(spec.architecture, 4, spec.input_size)
    transfer_backbone(base, network)
    set_trainable(network, head_modules(network) + trainable_backbone(network, config, epoch=1))
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    inputs = torch.randn(config.batch_size, 3, spec.input_size, spec.input_size)
    labels = torch.randint(0, 4, (config.batch_size,))
    started = time.perf_counter()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(network(inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * config.batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=3, help="each seed is another 80/20 split and init")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--throughput-only", action="store_true")
    args = parser.parse_args()

    datasets_dir = scratch_dir()
    dataset = ingest_archive(tuxpaint_archive(), datasets_dir, "tuxpaint4", SharedSettings().archive_limits)
    classes, items = dataset_images(datasets_dir, dataset["id"])
    print(f"data set: {dataset['counts']} ({len(dataset['unreadable'])} unreadable)")
    spec, base = load_builtin("efficientnet_lite0")
    rows = []
    for strategy in ([] if args.throughput_only else args.strategies.split(",")):
        scores, seconds = [], []
        for seed in range(args.seeds):
            config = FineTuneConfig(base_model="efficientnet_lite0", dataset_id=dataset["id"], output_model="bench",
                                    strategy=strategy, epochs=args.epochs, batch_size=16, lr=1e-3, backbone_lr=1e-4,
                                    augmentation=Augmentation(), early_stopping_patience=args.epochs, seed=seed)
            started = time.perf_counter()
            result = fine_tune(config, spec, base, classes, items, ignore_progress, lambda: False,
                               torch.device("cpu"), SharedSettings().max_image_pixels)
            seconds.append(time.perf_counter() - started)
            scores.append(result.metrics["val_accuracy"])
        spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
        rows.append((strategy, f"val accuracy {statistics.mean(scores):.3f} +- {spread:.3f} "
                               f"({', '.join(f'{s:.3f}' for s in scores)}), {statistics.mean(seconds):.0f} s wall per run"))
    if rows:
        report(f"fine-tuning on 4 Tuxpaint classes, {len(items)} images, 80/20, {args.epochs} epochs, "
               f"seeds 0..{args.seeds - 1}, CPU (goal fine_tune >= 0.90)", rows)

    config = FineTuneConfig(base_model="efficientnet_lite0", dataset_id=dataset["id"], output_model="bench",
                            strategy="fine_tune", epochs=3, batch_size=16, early_stopping_patience=3)
    job_rates, plain_rates = [], []
    for _ in range(2):  # alternate: job loop, plain loop
        metrics = fine_tune(config, spec, base, classes, items, ignore_progress, lambda: False,
                            torch.device("cpu"), SharedSettings().max_image_pixels).metrics
        job_rates.append(max(record["images_per_second"] for record in metrics["history"][1:]))
        plain_rates.append(plain_loop_images_per_second(config, steps=8))
    job, plain = max(job_rates), max(plain_rates)
    report("training throughput, epochs with the top blocks unfrozen, batch 16, CPU (images/s)", [
        ("fine-tune job loop (augmentation included)", f"{job:.1f}"),
        ("plain PyTorch loop (random tensors)", f"{plain:.1f}"),
        ("job / plain", f"{job / plain:.2f}x  (goal >= 0.9x)"),
    ])


if __name__ == "__main__":
    main()
