"""Where torch and ONNX Runtime run: the GPU when there is one, else the CPU (decided here only),
the faster arithmetic used on the GPU, and the memory layout used everywhere."""

from __future__ import annotations

import contextlib
from typing import ContextManager, TypeVar

import torch

Movable = TypeVar("Movable", torch.Tensor, torch.nn.Module)


def torch_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def images_per_pass(inputs: torch.Tensor, on_cpu: int) -> int:
    """Images in one pass of a many-pass method (IG's path points, SmoothGrad's noisy copies,
    Score-CAM's masked inputs): `on_cpu` on the CPU, and on CUDA as many pixels as 4 x `on_cpu`
    images of 224 x 224, since passes of 16 Lite0 images leave an H200 waiting on kernel launches
    (IG-50 in passes of 16: 55 ms; captum's single pass of 50: 21 ms)."""
    if inputs.device.type != "cuda":
        return on_cpu
    return max(1, 4 * on_cpu * 224 * 224 // (inputs.shape[-2] * inputs.shape[-1]))


def onnx_providers() -> list[str | tuple[str, dict[str, str]]]:
    """ONNX Runtime's execution providers, with their options. On CUDA, float32 stays IEEE float32
    (ONNX Runtime lets cuDNN and cuBLAS use TF32 by default): the load's agreement check compares
    with torch on the CPU, and the float16 export is the way to ask for speed over precision."""
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def fast_math(device: torch.device, bfloat16: bool) -> ContextManager[object]:
    """On CUDA when `bfloat16`, bfloat16 autocast: convolutions and matmuls in bfloat16, while
    autocast keeps reductions, softmax and losses in float32 (bfloat16 has float32's range, so
    gradients need no scaler). Else nothing changes: float32, whose convolutions cuDNN already runs
    on tensor cores in TF32. Asked for, not the default: on an H200, EfficientNet-Lite0 was slower
    in bfloat16 (Grad-CAM at batch 1 and 8 by 1.18-1.29x over three runs, faster only at 32; a
    training loop at batch 32 reached 0.83x the images/s of a float32 one, though that one was not
    channels_last), since its depthwise convolutions gain little and the casts cost kernels. CPU
    results stay exactly what they were."""
    if device.type == "cuda" and bfloat16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def fast_layout(value: Movable) -> Movable:
    """channels_last (NHWC): a module is converted in place, a 4-d tensor copied; anything else is
    `value` itself. cuDNN's tensor-core convolutions want it, and so does oneDNN on the CPU: there
    it made gradient methods 1.1-1.4x and a training step 1.2-1.5x faster for EfficientNet-Lite0,
    ResNet-18 and MobileNetV3, and ConvNeXt-T 0.94-1.09x (bench/channels_last.py). The results
    move only by float rounding."""
    if isinstance(value, torch.Tensor) and value.dim() != 4:
        return value
    return value.to(memory_format=torch.channels_last)
