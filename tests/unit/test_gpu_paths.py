"""What the GPU path adds, checked on the CPU: the float16 export agrees with float32 within its
stated tolerance (ONNX Runtime's CPU provider runs float16 graphs), I/O binding returns what a
plain run returns, fast_math changes nothing on the CPU, channels_last changes results by
rounding only, and CAM copies a classifier's weight once per change. tests/gpu runs the same
paths on CUDA."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

from core.explain import METHODS
from core.imaging import decode_image, preprocess
from core.models.catalog import load_builtin
from core.models.onnx_export import FP16_AGREEMENT_TOLERANCE, ensure_onnx, max_logit_difference, onnx_path
from core.runtime.devices import fast_layout, fast_math
from core.runtime.onnx_predictor import OnnxPredictor
from support import chelsea, foolbox_imagenet_photos

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(scope="module")
def lite0():
    return load_builtin("efficientnet_lite0")


@pytest.fixture(scope="module")
def half(lite0, tmp_path_factory):
    spec, network = lite0
    return ensure_onnx(network, spec, tmp_path_factory.mktemp("onnx"), half=True)


def test_the_float16_export_agrees_within_its_tolerance_and_keeps_float32_at_the_edges(lite0, half):
    spec, network = lite0
    assert half == onnx_path(half.parent, spec, half=True) != onnx_path(half.parent, spec)
    predictor = OnnxPredictor(half)
    assert {value.type for value in predictor.session.get_inputs() + predictor.session.get_outputs()} == \
        {"tensor(float)"}
    difference, largest = max_logit_difference(network, predictor, spec.input_size)
    assert 0 < difference <= FP16_AGREEMENT_TOLERANCE * max(1.0, largest)  # 0: it really is float16
    photos = [decode_image(path.read_bytes(), 10**8) for path, _ in foolbox_imagenet_photos()[:6]]
    batch = preprocess(photos, spec)[0]
    with torch.no_grad():
        exact = network(torch.from_numpy(batch)).numpy()
    rounded = predictor.logits(batch)
    assert (exact.argmax(axis=1) == rounded.argmax(axis=1)).all()
    assert np.abs(exact - rounded).max() <= FP16_AGREEMENT_TOLERANCE * np.abs(exact).max()


def test_io_binding_returns_what_a_plain_run_returns(lite0, half):
    spec, _ = lite0
    predictor = OnnxPredictor(half)
    assert predictor.bound_device == ("cuda" if "CUDAExecutionProvider" in predictor.providers else None)
    batch = preprocess([chelsea()], spec)[0]
    plain = predictor.session.run(["logits", "features"], {predictor.input_name: batch})
    bound = predictor.run_bound(["logits", "features"], batch, "cpu")
    for expected, actual in zip(plain, bound):
        np.testing.assert_array_equal(expected, actual)


def test_fast_math_leaves_the_cpu_as_it_was():
    with fast_math(CPU, bfloat16=True):
        assert not torch.is_autocast_enabled("cpu")


def test_on_cuda_fast_math_is_bfloat16_autocast_when_asked_only():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available": it is only made, never entered, here
        autocast = fast_math(CUDA, bfloat16=True)
    assert isinstance(autocast, torch.autocast) and autocast.device == "cuda"
    assert autocast.fast_dtype == torch.bfloat16
    assert not isinstance(fast_math(CUDA, bfloat16=False), torch.autocast)


def test_the_fast_layout_is_channels_last_for_modules_and_image_batches():
    image, module = torch.rand(2, 3, 8, 8), torch.nn.Conv2d(3, 4, 3)
    moved = fast_layout(image)
    assert moved.is_contiguous(memory_format=torch.channels_last) and torch.equal(moved, image)
    assert fast_layout(module) is module and module.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast_layout(torch.rand(2, 3)).is_contiguous()  # not an image batch: left alone


@pytest.mark.parametrize("method", ["gradcam", "saliency"])
def test_channels_last_moves_the_maps_by_rounding_only(lite0, method):
    spec, network = lite0
    inputs = torch.from_numpy(preprocess([chelsea()], spec)[0])
    plain = METHODS[method](network, inputs, None, spec.cam_layer)
    fast = METHODS[method](fast_layout(copy.deepcopy(network)), fast_layout(inputs), None, spec.cam_layer)
    assert torch.equal(plain.targets, fast.targets)
    np.testing.assert_allclose(fast.maps, plain.maps, atol=1e-5)
    torch.testing.assert_close(fast.logits, plain.logits, rtol=1e-5, atol=1e-4)


def test_a_layer_gradient_method_agrees_under_bfloat16_autocast(lite0, method="gradcam"):
    """What fast_math does on CUDA, done with the CPU's own bfloat16 autocast: the explainers run
    in it and their maps stay within 0.05 of float32. (Pixel-gradient methods do not: saliency's
    map correlates only ~0.85 with float32's, so they should run without it.)"""
    spec, network = lite0
    inputs = torch.from_numpy(preprocess([chelsea()], spec)[0])
    exact = METHODS[method](network, inputs, None, spec.cam_layer)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = METHODS[method](network, inputs, None, spec.cam_layer)
    assert int(exact.targets[0]) == int(fast.targets[0])
    assert np.abs(np.asarray(exact.maps, dtype=np.float32) - np.asarray(fast.maps, dtype=np.float32)).max() < 0.05


def test_the_classifier_weight_is_copied_once_per_change_not_once_per_cam():
    """A GPU model's CAM from ONNX Runtime's CPU feature map needs its classifier's weight on the
    CPU; float64 weights need a float32 copy in the same way, which the CPU can check."""
    from core.explain.cam import classifier_weight

    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    assert classifier_weight(network, "1", CPU).data_ptr() == network[1].weight.data_ptr()  # already so: no copy
    network.double()
    first = classifier_weight(network, "1", CPU)
    assert first.dtype == torch.float32 and classifier_weight(network, "1", CPU) is first
    with torch.no_grad():
        network[1].weight.add_(1.0)  # as an optimizer step would
    changed = classifier_weight(network, "1", CPU)
    assert changed is not first
    torch.testing.assert_close(changed, network[1].weight.float())
    network[1].weight.data = torch.zeros(3, 4, dtype=torch.float64)  # replaced: torch's counter stays
    torch.testing.assert_close(classifier_weight(network, "1", CPU), torch.zeros(3, 4))
