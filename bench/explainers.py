"""Explainers against a torch forward and against pytorch-grad-cam and captum, in-process;
Score-CAM's masked inputs scored on ONNX Runtime vs on torch.

  python -m bench.explainers

EfficientNet-Lite0 at 224 on CPU, chelsea preprocessed, the same tensor for every contender.
"""

from __future__ import annotations


import torch

from bench.common import interleaved, report, run_timed, served_model
from core import imaging
from core.explain import METHODS
from core.explain.baselines import make_baseline
from core.pipeline import onnx_scorer
from support import chelsea


def main() -> None:
    from captum.attr import IntegratedGradients as CaptumIntegratedGradients
    from pytorch_grad_cam import GradCAM as ReferenceGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = served_model()
    spec, network = model.spec, model.network
    inputs = torch.from_numpy(imaging.preprocess([chelsea()], spec)[0])
    target = torch.tensor([282])
    reference = ReferenceGradCAM(model=network, target_layers=[network.head])

    def forward() -> None:
        with torch.no_grad():
            network(inputs)

    times = interleaved({
        "forward": forward,
        "gradcam": lambda: METHODS["gradcam"](network, inputs, target, "head"),
        "pytorch_grad_cam": lambda: reference(input_tensor=inputs, targets=[ClassifierOutputTarget(282)]),
    }, rounds=7, per_round=10)
    report("gradcam at the default layer (median ms)", [
        ("torch forward (no_grad)", f"{times['forward']:.2f}"),
        ("gazer gradcam", f"{times['gradcam']:.2f}"),
        ("pytorch-grad-cam GradCAM", f"{times['pytorch_grad_cam']:.2f}"),
        ("gradcam / forward", f"{times.ratio('gradcam', 'forward'):.2f}x  (goal <= 1.3x)"),
        ("pytorch-grad-cam / gazer", f"{times.ratio('pytorch_grad_cam', 'gradcam'):.2f}x  (goal >= 2.5x)"),
    ])

    baseline = make_baseline("black", inputs, spec.mean, spec.std)
    captum = CaptumIntegratedGradients(network)
    times = interleaved({
        "gazer": lambda: METHODS["integrated_gradients"].attribute(network, inputs, target, steps=50,
                                                                  baseline=baseline),
        "captum": lambda: captum.attribute(inputs, baselines=baseline, target=282, n_steps=50),
    }, rounds=5, per_round=1, warmup=1)
    report("integrated gradients, 50 steps, black baseline (median ms)", [
        ("gazer", f"{times['gazer']:.0f}"),
        ("captum IntegratedGradients(n_steps=50)", f"{times['captum']:.0f}"),
        ("captum / gazer", f"{times.ratio('captum', 'gazer'):.2f}x  (goal >= 1.0x)"),
    ])

    score = onnx_scorer(model)
    times = interleaved({
        "torch": lambda: METHODS["scorecam"](network, inputs, target, "blocks.15"),
        "onnx": lambda: METHODS["scorecam"](network, inputs, target, "blocks.15", score=score),
    }, rounds=3, per_round=1, warmup=1)
    report("scorecam at blocks.15 (320 masked inputs), median ms", [
        ("masked inputs scored by torch", f"{times['torch']:.0f}"),
        ("scored by ONNX Runtime (what the service does)", f"{times['onnx']:.0f}"),
        ("torch / ONNX Runtime", f"{times.ratio('torch', 'onnx'):.2f}x"),
    ])


if __name__ == "__main__":
    run_timed(main)
