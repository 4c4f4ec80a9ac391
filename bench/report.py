"""The report of a fine-tune (core.training.report) on Tuxpaint's four stamp classes (see
bench/fine_tuning.py): its share of the job's time, and the background-reliance scores, on the
plain set and on variants where a planted cue near the border marks a class: a coloured frame,
or a coloured patch at a random place along the edge; on every image of one class (besides its
own content), or as the only evidence of a fifth class (see `tuxpaint_variant`).

  python -m bench.report [--epochs 3] [--seeds 1] [--variants plain,frame,patch,frame-only,patch-only]
                         [--cue-class fruit]

Each run is the fine-tune job's own body (core.job_runners.run_fine_tune: training, report, ONNX
export and publishing) in this process, on the CPU. The score is printed as the report takes it
(SCORE_METHOD at `score_layer`) and by Grad-CAM at the CAM layer; a class is flagged when its
score is above BACKGROUND_WARNING.
"""

from __future__ import annotations

import argparse
import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from bench.common import ignore_progress, report, scratch_dir
from bench.fine_tuning import CLASSES, STAMPS
from core.datasets import ingest_archive
from core.job_runners import JobContext, run_fine_tune
from core.models.registry import ModelRegistry
from core.storage import Storage
from core.training.report import BACKGROUND_WARNING
from infra.settings import SharedSettings

CANVAS = 256        # each stamp fitted into a white square this big
CROP = 224          # what EfficientNet-Lite0 sees of it: the centre (input_size + 32 -> input_size)
INSET = (CANVAS - CROP) // 2
FRAME_WIDTH = 12
PATCH_SIDE = 32
CUE_COLOUR = (230, 20, 200)


def _square(path: Path) -> Image.Image:
    stamp = Image.open(path).convert("RGBA")
    stamp.thumbnail((CANVAS - 2 * INSET - 2 * FRAME_WIDTH - 8,) * 2)  # the stamp clear of any cue
    canvas = Image.new("RGBA", (CANVAS, CANVAS), (255, 255, 255, 255))
    canvas.alpha_composite(stamp, ((CANVAS - stamp.width) // 2, (CANVAS - stamp.height) // 2))
    return canvas.convert("RGB")


def plant(image: Image.Image, cue: str, rng: np.random.Generator) -> Image.Image:
    """A frame along the border of what the model sees, or a patch touching one of its edges."""
    draw = ImageDraw.Draw(image)
    low, high = INSET, INSET + CROP - 1
    if cue == "frame":
        draw.rectangle((low, low, high, high), outline=CUE_COLOUR, width=FRAME_WIDTH)
    elif cue == "patch":
        side = int(rng.integers(4))
        along = int(rng.integers(low, high - PATCH_SIDE))
        far = high - PATCH_SIDE
        left, top = {0: (along, low), 1: (along, far), 2: (low, along), 3: (far, along)}[side]
        draw.rectangle((left, top, left + PATCH_SIDE - 1, top + PATCH_SIDE - 1), fill=CUE_COLOUR)
    return image


def tuxpaint_variant(variant: str, cue_class: str, seed: int = 0) -> bytes:
    """`plain`; `frame` or `patch`: every image of `cue_class` carries the cue (besides its own
    content); `frame-only` or `patch-only`: a fifth class, `marked`, of every fourth stamp of
    each class with the cue, so that the cue is all that tells it."""
    cue, _, only = variant.partition("-")
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for label, folder in CLASSES.items():
            stamps = [path for path in sorted((STAMPS / folder).rglob("*.png"))
                      if "_mirror" not in path.stem and "thumb" not in path.stem]
            for index, path in enumerate(stamps):
                image, folder_name = _square(path), label
                if only and index % 4 == 3:
                    image, folder_name = plant(image, cue, rng), "marked"
                elif label == cue_class and cue != "plain" and not only:
                    image = plant(image, cue, rng)
                png = io.BytesIO()
                image.save(png, "PNG")
                archive.writestr(f"{folder_name}/{path.parent.name}-{path.stem}.png", png.getvalue())
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--variants", default="plain,frame,patch,frame-only,patch-only")
    parser.add_argument("--cue-class", default="fruit", choices=sorted(CLASSES))
    args = parser.parse_args()
    if not STAMPS.exists():
        raise SystemExit("install Debian's tuxpaint-stamps-default first (apt-get install tuxpaint-stamps-default)")

    storage = Storage(scratch_dir())
    settings = SharedSettings()
    context = JobContext(storage, ModelRegistry(storage, max_loaded=2), settings.max_image_pixels,
                         lambda job, name: f"/v1/jobs/{job}/artifacts/{name}")
    shares, rows = [], []
    for variant in args.variants.split(","):
        dataset = ingest_archive(tuxpaint_variant(variant, args.cue_class), storage.datasets, f"tux-{variant}",
                                 settings.archive_limits)
        for seed in range(args.seeds):
            params = {"dataset_id": dataset["id"], "output_model": f"bench-{variant}", "strategy": "fine_tune",
                      "epochs": args.epochs, "batch_size": 16, "early_stopping_patience": args.epochs, "seed": seed}
            started = time.perf_counter()
            result = run_fine_tune(f"bench-{variant}-{seed}", params, ignore_progress, lambda: False, context)
            job_seconds = time.perf_counter() - started
            summary = result["report"]
            document = json.loads((storage.job_artifacts(f"bench-{variant}-{seed}") / "report.json").read_text())
            shares.append((summary["seconds"], summary["training_seconds"], job_seconds))
            fine = {entry["label"]: entry["background_reliance"] for entry in document["classes"]}
            coarse = {entry["label"]: entry["background_reliance_cam_layer"] for entry in document["classes"]}

            def describe(scores: dict) -> str:
                flagged = [label for label, score in scores.items()
                           if score is not None and score > BACKGROUND_WARNING]
                listed = ", ".join(f"{label} {score:.3f}" if score is not None else f"{label} -"
                                   for label, score in scores.items())
                return f"{listed}; flagged: {', '.join(flagged) or 'none'}"

            accuracy = result["metrics"]["val_accuracy"]
            rows.append((f"{variant} seed {seed}, {document['score_method']} at {document['score_layer']}",
                         f"{describe(fine)}  (val acc {accuracy:.3f}, {summary['mistakes']} mistakes)"))
            rows.append((f"{variant} seed {seed}, gradcam at {document['cam_layer']}", describe(coarse)))
    report(f"background reliance (share of the map's mass outside the central half; flagged above "
           f"{BACKGROUND_WARNING}), cue on {args.cue_class!r}, {args.epochs} epochs, CPU", rows)
    report_seconds = sum(s[0] for s in shares)
    training_seconds = sum(s[1] for s in shares)
    job_seconds = sum(s[2] for s in shares)
    report("the report's cost, summed over the runs above", [
        ("report (loading the validation images included)", f"{report_seconds:.1f} s"),
        ("training", f"{training_seconds:.1f} s"),
        ("whole job (training, report, export, publishing)", f"{job_seconds:.1f} s"),
        ("report / training", f"{report_seconds / training_seconds:.3f}  (goal <= 0.25)"),
        ("report / job", f"{report_seconds / job_seconds:.3f}"),
    ])


if __name__ == "__main__":
    main()
