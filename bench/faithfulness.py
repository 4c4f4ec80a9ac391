"""Deletion and insertion (Petsiuk et al. 2018) for every explanation method, on the 20
ImageNet photos of the foolbox wheel, in-process, each photo's label as the target.

    python -m bench.faithfulness

Deletion: area under p(label) as the map's top pixels are blacked out (lower is better);
insertion: as they are restored into a blurred copy (higher is better). A seeded random map
per photo is the floor to beat. The same settings as bench.pointing_game.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from bench.common import run_timed, served_model
from bench.pointing_game import OPTIONS
from core import imaging, pipeline
from core.explain import METHODS
from core.explain.faithfulness import DEFAULT_STEPS, deletion_and_insertion
from support import foolbox_imagenet_photos

MODEL = "efficientnet_lite0"


def main() -> None:
    model = served_model(MODEL)
    photos = foolbox_imagenet_photos()
    images = [imaging.decode_image(path.read_bytes(), 10**8) for path, _ in photos]
    labels = [label for _, label in photos]
    print(f"deletion / insertion: {MODEL}, {len(images)} foolbox photos, {DEFAULT_STEPS} steps, the label as target")
    print(f"{'method':22} {'deletion':>9} {'insertion':>10} {'seconds':>8}")
    inputs = torch.from_numpy(imaging.preprocess(images, model.spec)[0])
    generator = np.random.default_rng(0)
    score = pipeline.onnx_scorer(model)
    random_scores = [deletion_and_insertion(score, inputs[index],
                                            generator.random((7, 7)).astype(np.float32), label,
                                            model.spec.mean, model.spec.std)
                     for index, label in enumerate(labels)]
    print(f"{'random 7x7 map':22} {np.mean([s.deletion for s in random_scores]):9.3f} "
          f"{np.mean([s.insertion for s in random_scores]):10.3f}")
    for method in METHODS:
        if method not in model.methods:
            continue
        options = dict(OPTIONS.get(method, {}))
        layer = options.pop("layer", None)
        started = time.perf_counter()
        results = pipeline.explain(model, images, method, labels, layer, options, outputs=("map",),
                                   faithfulness=True)
        scores = [result.explanation.faithfulness for result in results]
        print(f"{method:22} {np.mean([s.deletion for s in scores]):9.3f} "
              f"{np.mean([s.insertion for s in scores]):10.3f} {time.perf_counter() - started:8.1f}")


if __name__ == "__main__":
    run_timed(main)
