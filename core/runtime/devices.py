"""Where torch and ONNX Runtime run: the GPU when there is one, else the CPU (decided here only)."""

from __future__ import annotations

import torch


def torch_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def onnx_providers() -> list[str]:
    import onnxruntime

    available = onnxruntime.get_available_providers()
    preferred = [name for name in ("CUDAExecutionProvider",) if name in available]
    return preferred + ["CPUExecutionProvider"]
