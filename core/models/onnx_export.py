"""Export a network to ONNX once per weights digest, and check it agrees with torch; optionally
in float16 for GPUs."""

from __future__ import annotations

import copy
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from core.explain.base import capture
from core.models.architectures import build_network
from core.models.flops import REFERENCE_ARCHITECTURE, REFERENCE_INPUT_SIZE
from core.models.spec import ModelSpec

AGREEMENT_TOLERANCE = 1e-4  # times max(1, the largest |logit|)
# The float16 export against float32 torch, in the same units: float16 keeps 11 bits of mantissa.
# EfficientNet-Lite0 measured 2.1e-2 on max_logit_difference's random input, 3.9e-3 on photos.
FP16_AGREEMENT_TOLERANCE = 5e-2


class _LogitsAndFeatures(nn.Module):
    """The graph that ONNX Runtime serves: logits for predictions, the CAM layer's feature map
    (captured on its way through the same forward) for CAM."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with capture(self.network, self.network.anatomy.cam_layer) as captured:
            logits = self.network(x)
        return logits, captured.activation


class _HalfPrecision(nn.Module):
    """The same graph computed in float16 (a float16 copy of the network), with float32 input and
    outputs: what the API sends and reads stays as it is."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.inner = _LogitsAndFeatures(copy.deepcopy(network).cpu().half())  # traced on the CPU

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, features = self.inner(x.half())
        return logits.float(), features.float()


def onnx_path(cache_dir: Path, spec: ModelSpec, half: bool = False) -> Path:
    suffix = "-fp16" if half else ""
    return cache_dir / f"{spec.id}-v{spec.version}-{spec.weights_digest[:16]}-{spec.input_size}{suffix}.onnx"


def ensure_onnx(network: nn.Module, spec: ModelSpec, cache_dir: Path, half: bool = False) -> Path:
    """Return the cached ONNX file for this spec's weights (computing in float16 when `half`),
    exporting it first if needed."""
    path = onnx_path(cache_dir, spec, half)
    if not path.exists():
        _export_to(path, lambda temporary: export_onnx(network, spec.input_size, temporary, half))
    return path


def reference_onnx(cache_dir: Path) -> Path:
    """The explain budget's reference network (flops.REFERENCE_ARCHITECTURE) as ONNX Runtime serves
    it, exported once, with random weights (a run's time does not depend on them): what an
    uploaded ONNX graph's check times its runs against (relative_time)."""
    path = cache_dir / f"reference-{REFERENCE_ARCHITECTURE}-{REFERENCE_INPUT_SIZE}.onnx"
    if not path.exists():
        network = build_network(REFERENCE_ARCHITECTURE, 1000, REFERENCE_INPUT_SIZE).eval()
        _export_to(path, lambda temporary: export_onnx(network, REFERENCE_INPUT_SIZE, temporary))
    return path


def _export_to(path: Path, export: Callable[[Path], None]) -> None:
    """`export` to a file beside `path`, renamed to it once complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".onnx.partial")
    os.close(handle)
    try:
        export(Path(temporary))
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


# torch's ONNX exporter keeps its state in globals, and catch_warnings swaps the process's filters:
# two exports at once (two models' first loads, an upload meanwhile) failed one of them ("GLOBALS.
# in_onnx_export must be True") and could leave every warning ignored for good.
_EXPORTING = threading.Lock()


def export_onnx(network: nn.Module, input_size: int, path: Path, half: bool = False) -> None:
    """`half`: weights and activations in float16 (for GPUs; agrees within FP16_AGREEMENT_TOLERANCE),
    input and outputs float32 all the same. One export at a time in a process."""
    example = torch.zeros(1, 3, input_size, input_size)
    wrapper = (_HalfPrecision(network) if half else _LogitsAndFeatures(network)).eval()
    with _EXPORTING, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, (example,), str(path), dynamo=False, opset_version=17,
            input_names=["input"], output_names=["logits", "features"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}, "features": {0: "batch"}},
        )


def max_logit_difference(network: nn.Module, predictor, input_size: int) -> tuple[float, float]:
    """On a fixed input in the normalized pixel range: the largest |torch - ONNX Runtime| logit
    (infinite when either side's logits are not finite: NaN would compare as agreeing), and the
    largest |torch logit|, the scale that float32 rounding grows with."""
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(2, 3, input_size, input_size, generator=generator) * 2 - 1
    device = next(network.parameters()).device
    with torch.no_grad():
        expected = network(example.to(device)).float().cpu().numpy()
    actual = predictor.logits(example.numpy())
    if not (np.isfinite(expected).all() and np.isfinite(actual).all()):
        return float("inf"), float("nan")
    return float(np.abs(expected - actual).max()), float(np.abs(expected).max())
