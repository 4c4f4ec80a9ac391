"""The model-agnostic methods, which only score masked inputs: RISE's masked inputs scored by the
served ONNX Runtime session vs by torch; occlusion's time and number of masked inputs.

  python -m bench.model_agnostic

EfficientNet-Lite0 at 224 on CPU, chelsea preprocessed, target 282 (tiger cat).
"""

from __future__ import annotations

import numpy as np
import torch

from bench.common import interleaved, report, run_timed, served_model
from core import imaging
from core.explain import METHODS
from core.pipeline import onnx_scorer
from support import chelsea

RISE_MASKS = 2000
TORCH_BATCH = 32


def main() -> None:
    model = served_model()
    spec, network = model.spec, model.network
    inputs = torch.from_numpy(imaging.preprocess([chelsea()], spec)[0])
    target = torch.tensor([282])
    on_onnx = onnx_scorer(model)

    def on_torch(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([network(batch[start:start + TORCH_BATCH]) for start in range(0, len(batch), TORCH_BATCH)])

    def rise(score):
        return METHODS["rise"](None, inputs, target, score=score, masks=RISE_MASKS, input_mean=spec.mean,
                               input_std=spec.std)

    maps = {}
    times = interleaved({
        "onnx": lambda: maps.__setitem__("onnx", rise(on_onnx).maps),
        "torch": lambda: maps.__setitem__("torch", rise(on_torch).maps),
    }, rounds=3, per_round=1, warmup=1)
    report(f"rise, {RISE_MASKS} masks (median ms)", [
        ("scored by ONNX Runtime, 128 per call (what the service does)", f"{times['onnx']:.0f}"),
        (f"scored by torch, {TORCH_BATCH} per call", f"{times['torch']:.0f}"),
        ("torch / ONNX Runtime", f"{times.ratio('torch', 'onnx'):.2f}x  (goal >= 2x)"),
        ("max abs difference of the two maps", f"{np.abs(maps['onnx'] - maps['torch']).max():.1e}"),
    ])

    scored = []

    def counted(batch: torch.Tensor) -> torch.Tensor:
        scored.append(len(batch))
        return on_onnx(batch)

    times = interleaved({
        "occlusion": lambda: METHODS["occlusion"](None, inputs, target, score=counted, window=32, stride=16,
                                                  input_mean=spec.mean, input_std=spec.std),
    }, rounds=3, per_round=1, warmup=1)
    runs = 4  # the warm-up and the three rounds
    report("occlusion, window 32, stride 16, scored by ONNX Runtime", [
        ("median ms", f"{times['occlusion']:.0f}"),
        ("masked inputs", f"{(sum(scored) - runs) // runs}  (and the image itself once)"),
        ("score calls", f"{len(scored) // runs}"),
    ])


if __name__ == "__main__":
    run_timed(main)
