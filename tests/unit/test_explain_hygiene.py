"""Explainers leave the caller's model and autograd state as they found them.

For every method in METHODS: no hook left on any module, parameter or input (also when the
call raises), parameters' `.grad` untouched, gradient mode and `training` flags restored, works
under `torch.no_grad()`, no memory growth over repeated calls, and bad layer names or option
values raise the domain errors the service maps to 422.
"""

from __future__ import annotations

import gc
import math
import tracemalloc
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_globals

from core.errors import InvalidRequest, UnknownLayer
from core.explain import METHODS
from core.explain.base import normalize_maps

LAYER = "features.relu2"
TENSOR_TYPES = (torch.Tensor, nn.Parameter)
METHOD_NAMES = sorted(METHODS)
CHEAP_OPTIONS = {"integrated_gradients": {"steps": 4}, "smoothgrad": {"samples": 3},
                 "cam": {"classifier": "classifier"}, "occlusion": {"window": 4, "stride": 2}, "rise": {"masks": 64}}

MODULE_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                     "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                     "_forward_pre_hooks_with_kwargs", "_state_dict_hooks", "_load_state_dict_pre_hooks")
GLOBAL_HOOK_DICTS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                     "_global_backward_pre_hooks", "_global_forward_hooks_always_called")


class Bomb(nn.Module):
    """Identity until armed; then raises in forward (after the explained layer has run)."""

    armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.armed:
            raise RuntimeError("boom")
        return x


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(3, 8, 3, padding=1)), ("relu1", nn.ReLU()),
            ("conv2", nn.Conv2d(8, 16, 3, padding=1)), ("relu2", nn.ReLU()),
            ("bomb", Bomb()),
        ]))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


def make_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().eval()


def make_inputs(count: int = 2, size: int = 12) -> torch.Tensor:
    return torch.randn((count, 3, size, size), generator=torch.Generator().manual_seed(1))


def layer_for(method: str) -> str | None:
    return LAYER if METHODS[method].uses_layer else None


def call(method: str, net: nn.Module, inputs: torch.Tensor, targets=None, **options):
    return METHODS[method](net, inputs, targets, layer_for(method), **{**CHEAP_OPTIONS.get(method, {}), **options})


def hook_counts(net: nn.Module, *tensors: torch.Tensor) -> dict[str, int]:
    """Every hook anywhere: on each submodule, on each parameter, on given tensors, globally."""
    counts: dict[str, int] = {}
    for name, module in net.named_modules():
        for attribute in MODULE_HOOK_DICTS:
            hooks = getattr(module, attribute, None)
            counts[f"module {name or '<root>'}.{attribute}"] = len(hooks) if hooks is not None else 0
    for name, tensor in [*net.named_parameters(), *((f"tensor {i}", t) for i, t in enumerate(tensors))]:
        for attribute in ("_backward_hooks", "_post_accumulate_grad_hooks"):
            hooks = getattr(tensor, attribute, None)
            counts[f"{name}.{attribute}"] = len(hooks) if hooks is not None else 0
    for attribute in GLOBAL_HOOK_DICTS:
        counts[f"global {attribute}"] = len(getattr(module_globals, attribute, {}))
    return counts


def assert_no_hooks(net: nn.Module, *tensors: torch.Tensor) -> None:
    leftovers = {key: count for key, count in hook_counts(net, *tensors).items() if count}
    assert not leftovers, f"hooks left behind: {leftovers}"


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_no_state_left_behind(method):
    net, inputs = make_net(), make_inputs()
    before = inputs.clone()
    parameters_before = [p.detach().clone() for p in net.parameters()]
    assert_no_hooks(net, inputs)
    explanation = call(method, net, inputs, torch.tensor([0, 3]))
    assert explanation.maps.shape[0] == 2 and np.isfinite(explanation.maps).all()
    assert_no_hooks(net, inputs)
    assert all(p.grad is None for p in net.parameters()), "parameters' .grad were written"
    assert inputs.grad is None and not inputs.requires_grad
    assert torch.equal(inputs, before), "the input tensor was modified"
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), parameters_before))
    assert not explanation.logits.requires_grad
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_existing_parameter_gradients_are_untouched(method):
    net, inputs = make_net(), make_inputs()
    for index, parameter in enumerate(net.parameters()):
        parameter.grad = torch.full_like(parameter, float(index + 1))
    saved = [p.grad.clone() for p in net.parameters()]
    call(method, net, inputs)
    assert all(torch.equal(p.grad, g) for p, g in zip(net.parameters(), saved))


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_works_under_no_grad_and_restores_grad_mode(method):
    net, inputs = make_net(), make_inputs()
    expected = call(method, net, inputs).maps
    with torch.no_grad():
        inside = call(method, net, inputs)
        assert not torch.is_grad_enabled(), "gradient mode switched on for the caller"
    assert torch.is_grad_enabled()
    # The same maps: gradients were really computed, not zeros or garbage.
    np.testing.assert_allclose(inside.maps, expected, atol=1e-6)
    assert inside.maps.max() > 0.99
    with torch.enable_grad():
        call(method, net, inputs)
        assert torch.is_grad_enabled()
    torch.set_grad_enabled(False)
    try:
        call(method, net, inputs)
        assert not torch.is_grad_enabled()
    finally:
        torch.set_grad_enabled(True)
    assert_no_hooks(net, inputs)


@pytest.mark.parametrize("method", METHOD_NAMES)
@pytest.mark.parametrize("mode", ["eval", "train", "mixed"])
def test_training_flags_unchanged(method, mode):
    net, inputs = make_net(), make_inputs()
    net.train(mode == "train")
    if mode == "mixed":
        net.train()
        net.features.relu1.eval()
        net.classifier.eval()
    flags = {name: module.training for name, module in net.named_modules()}
    call(method, net, inputs)
    assert {name: module.training for name, module in net.named_modules()} == flags


@pytest.mark.parametrize("grad_enabled", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_hooks_removed_when_the_forward_raises(method, grad_enabled):
    """The model raises after the explained layer ran (its hook fired, and for layer methods
    switched gradient mode on): hooks must go and gradient mode must come back."""
    net, inputs = make_net(), make_inputs()
    net.features.bomb.armed = True
    with torch.set_grad_enabled(grad_enabled):
        with pytest.raises(RuntimeError, match="boom"):
            call(method, net, inputs)
        assert torch.is_grad_enabled() == grad_enabled
    assert_no_hooks(net, inputs)
    assert all(p.grad is None for p in net.parameters())
    net.features.bomb.armed = False
    # Nothing half-done lingers: the next call works and matches a fresh model's.
    np.testing.assert_allclose(call(method, net, inputs).maps, call(method, make_net(), inputs).maps, atol=1e-6)


@pytest.mark.parametrize("grad_enabled", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_hooks_removed_when_the_target_is_out_of_range(method, grad_enabled):
    net, inputs = make_net(), make_inputs()
    with torch.set_grad_enabled(grad_enabled):
        with pytest.raises((IndexError, RuntimeError, InvalidRequest)):
            call(method, net, inputs, torch.tensor([1, 99]))
        assert torch.is_grad_enabled() == grad_enabled
    assert_no_hooks(net, inputs)
    assert all(p.grad is None for p in net.parameters())


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if type(obj) in TENSOR_TYPES)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def test_repeated_gradcam_calls_do_not_grow_memory():
    """Like pytorch-grad-cam's test_context_release: a leaked graph or captured activation per
    call would keep ~1.5 MB alive each time here (150 MB over 100 calls)."""
    net = make_net()
    inputs = make_inputs(count=2, size=64)
    targets = torch.tensor([1, 2])
    for _ in range(10):  # warm-up: allocator pools, lazy init
        METHODS["gradcam"](net, inputs, targets, LAYER)
    tensors_before = _live_tensors()
    rss_before = _rss_bytes()
    tracemalloc.start()
    try:
        traced_before = tracemalloc.get_traced_memory()[0]
        for _ in range(100):
            explanation = METHODS["gradcam"](net, inputs, targets, LAYER)
        del explanation
        gc.collect()
        traced_growth = tracemalloc.get_traced_memory()[0] - traced_before
    finally:
        tracemalloc.stop()
    rss_growth = _rss_bytes() - rss_before
    tensor_growth = _live_tensors() - tensors_before
    print(f"100 gradcam calls: live tensors {tensor_growth:+d}, python heap {traced_growth / 1024:+.1f} KiB, "
          f"RSS {rss_growth / 2**20:+.1f} MiB")
    assert tensor_growth <= 0
    assert traced_growth < 256 * 1024
    assert rss_growth < 24 * 2**20
    assert_no_hooks(net, inputs)


def test_repeated_calls_keep_no_tensors_alive():
    net, inputs = make_net(), make_inputs()
    for method in METHOD_NAMES:
        call(method, net, inputs)
    growth = {}
    before = _live_tensors()
    for method in METHOD_NAMES:
        for _ in range(3):
            call(method, net, inputs)
        after = _live_tensors()
        growth[method], before = after - before, after
    assert all(count <= 0 for count in growth.values()), f"tensors kept alive per method: {growth}"


LAYER_METHODS = sorted(name for name, method in METHODS.items() if method.uses_layer)


@pytest.mark.parametrize("layer", ["nope", "features.relu9", "", None])
@pytest.mark.parametrize("method", LAYER_METHODS)
def test_an_unknown_layer_raises_and_leaves_no_hooks_or_grad_mode_behind(method, layer):
    net, inputs = make_net(), make_inputs()
    with pytest.raises(UnknownLayer):
        METHODS[method](net, inputs, None, layer, **CHEAP_OPTIONS.get(method, {}))
    assert_no_hooks(net, inputs)
    assert torch.is_grad_enabled()


def test_layer_methods_are_the_cam_family_and_guided_gradcam():
    assert set(LAYER_METHODS) == {"cam", "gradcam", "gradcam++", "layercam", "scorecam", "guided_gradcam", "attention"}


BAD_OPTIONS = [
    ("integrated_gradients", {"steps": 0}),
    ("integrated_gradients", {"steps": -3}),
    ("integrated_gradients", {"steps": 513}),
    ("integrated_gradients", {"internal_batch_size": 0}),
    ("integrated_gradients", {"baseline": "zeros"}),
    ("smoothgrad", {"samples": 0}),
    ("smoothgrad", {"samples": 257}),
    ("smoothgrad", {"noise": 2}),
    ("smoothgrad", {"noise": -0.1}),
    ("smoothgrad", {"noise": math.nan}),
    ("smoothgrad", {"internal_batch_size": 0}),
    ("scorecam", {"batch_size": 0}),
    ("scorecam", {"batch_size": 5000}),
    ("occlusion", {"window": 2}),
    ("occlusion", {"stride": 0}),
    ("rise", {"masks": 0}),
    ("rise", {"p": 0}),
]


@pytest.mark.parametrize("method, options", BAD_OPTIONS,
                         ids=[f"{m}-{'-'.join(f'{k}={v}' for k, v in o.items())}" for m, o in BAD_OPTIONS])
def test_out_of_range_options_raise_invalid_request(method, options):
    net, inputs = make_net(), make_inputs()
    with pytest.raises(InvalidRequest) as raised:
        METHODS[method](net, inputs, None, layer_for(method), **options)
    assert raised.value.extra.get("field") in options
    assert_no_hooks(net, inputs)
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("method, options", [
    ("integrated_gradients", {"steps": 1}), ("integrated_gradients", {"steps": 512, "internal_batch_size": 512}),
    ("smoothgrad", {"samples": 1}), ("smoothgrad", {"noise": 0.0}), ("smoothgrad", {"noise": 1.0}),
    ("scorecam", {"batch_size": 1}),
    ("occlusion", {"window": 4, "stride": 1}), ("occlusion", {"window": 224, "stride": 224}), ("rise", {"masks": 1}),
])
def test_options_at_the_limits_are_accepted(method, options):
    net, inputs = make_net(), make_inputs(count=1, size=8)
    maps = METHODS[method](net, inputs, None, layer_for(method), **options).maps
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1


def test_maps_of_small_values_scale_to_one_and_a_constant_map_is_all_zeros():
    """An untrained network's gradients are tiny: its map still spans [0, 1], as its heatmap does."""
    tiny = torch.tensor([[[0.0, 1e-9], [3e-9, 2e-9]], [[5.0, 5.0], [5.0, 5.0]]])
    scaled = normalize_maps(tiny)
    assert scaled[0].max() == 1.0 and scaled[0].min() == 0.0 and np.allclose(scaled[0], [[0, 1 / 3], [1, 2 / 3]])
    assert (scaled[1] == 0).all()
