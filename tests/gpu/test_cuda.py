"""On a CUDA machine: the served model runs on the GPU and agrees with the CPU. Skipped elsewhere."""

from __future__ import annotations

import pytest
import torch

from core.explain import METHODS
from core.imaging import preprocess
from core.models.catalog import load_builtin
from core.runtime.devices import onnx_providers, torch_device
from support import chelsea

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_devices_prefer_the_gpu():
    assert torch_device().type == "cuda"
    assert onnx_providers()[0] == "CUDAExecutionProvider"


@pytest.mark.parametrize("method", ["gradcam", "saliency", "integrated_gradients"])
def test_gpu_explanations_match_the_cpu(method):
    spec, network = load_builtin("efficientnet_lite0")
    inputs = torch.from_numpy(preprocess([chelsea()], spec)[0])
    options = {"steps": 16} if method == "integrated_gradients" else {}
    on_cpu = METHODS[method](network, inputs, None, spec.cam_layer, **options)
    on_gpu = METHODS[method](network.cuda(), inputs.cuda(), None, spec.cam_layer, **options)
    assert int(on_cpu.targets[0]) == int(on_gpu.targets[0])
    assert abs(on_cpu.maps - on_gpu.maps).max() < 1e-2
