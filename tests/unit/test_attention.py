"""Attention modules (core.attention) and EfficientNet-Lite with attention: shapes, gradients, gate
ranges and shapes, hyper-parameters, the chapter formulas against a hand computation, ONNX export."""

from __future__ import annotations

import io
import warnings
from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from core.attention import (CBAM, ChannelAttention, SpatialAttention, attention_modules, make_attention,
                            spatial_gates)
from core import imaging
from core.models.architectures import build_network
from core.models.catalog import load_builtin
from core.models.onnx_export import export_onnx
from core.training.finetune import transfer_backbone
from support import chelsea, coffee

B, C, H, W = 2, 32, 9, 11  # H != W catches transposed maps


def modules() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "se": ChannelAttention(C, reduction=4),
        "se_maxpool": ChannelAttention(C, reduction=4, use_max_pool=True),
        "spatial": SpatialAttention(kernel_size=5),
        "cbam_channel_first": CBAM(C, reduction=4, kernel_size=5, channel_first=True),
        "cbam_spatial_first": CBAM(C, reduction=4, kernel_size=5, channel_first=False),
        "make_se": make_attention("se", C),
        "make_spatial": make_attention("spatial", C),
        "make_cbam": make_attention("cbam", C),
    }


MODULE_NAMES = list(modules())


def sample_input(seed: int = 1, requires_grad: bool = False) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    # a per-image, per-channel offset so the pooled statistics differ between images and channels
    x = torch.randn(B, C, H, W, generator=generator) + torch.randn(B, C, 1, 1, generator=generator)
    return x.requires_grad_(requires_grad)


def gate_outputs(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The module's output and each `...gate` submodule's output, captured with forward hooks
    (no autograd graph: for checking values)."""
    captured: dict[str, torch.Tensor] = {}
    handles = [sub.register_forward_hook(lambda m, i, o, name=name: captured.__setitem__(name, o))
               for name, sub in module.named_modules() if name.split(".")[-1] == "gate"]
    try:
        with torch.no_grad():
            out = module(x)
    finally:
        for handle in handles:
            handle.remove()
    return out, captured


def gate_kinds(module: nn.Module) -> dict[str, str]:
    """gate name -> 'channel' or 'spatial', by the attention module that owns it."""
    kinds = {}
    for name, sub in module.named_modules():
        if isinstance(sub, (ChannelAttention, SpatialAttention)):
            prefix = f"{name}." if name else ""
            kinds[f"{prefix}gate"] = "channel" if isinstance(sub, ChannelAttention) else "spatial"
    return kinds


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_output_shape_is_the_input_shape(name):
    module = modules()[name]
    x = sample_input()
    assert module(x).shape == x.shape


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_gradients_reach_the_input_and_every_parameter(name):
    module = modules()[name]
    x = sample_input(requires_grad=True)
    projection = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(7))
    (module(x) * projection).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    parameters = dict(module.named_parameters())
    assert parameters, "an attention module without parameters"
    for parameter_name, parameter in parameters.items():
        assert parameter.grad is not None, parameter_name
        assert torch.isfinite(parameter.grad).all(), parameter_name
        assert parameter.grad.abs().sum() > 0, f"{parameter_name} gets no gradient"


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_gates_lie_strictly_between_0_and_1_with_the_documented_shapes(name):
    module = modules()[name].eval()
    x = sample_input()
    _, gates = gate_outputs(module, x)
    kinds = gate_kinds(module)
    assert set(gates) == set(kinds) and gates
    for gate_name, value in gates.items():
        expected = (B, C, 1, 1) if kinds[gate_name] == "channel" else (B, 1, H, W)
        assert tuple(value.shape) == expected, (gate_name, value.shape)
        assert (value > 0).all() and (value < 1).all(), gate_name
    if name.startswith(("cbam", "make_cbam")):
        assert set(kinds.values()) == {"channel", "spatial"}


def test_gates_are_what_multiplies_the_input():
    """out == x * channel gate (SE) and out == x * spatial gate (spatial attention)."""
    x = sample_input()
    for module in (ChannelAttention(C, 4), SpatialAttention(5), ChannelAttention(C, 4, use_max_pool=True)):
        out, gates = gate_outputs(module.eval(), x)
        torch.testing.assert_close(out, x * gates["gate"])
    cbam = CBAM(C, 4, 5, channel_first=True).eval()
    out, gates = gate_outputs(cbam, x)
    torch.testing.assert_close(out, x * gates["channel.gate"] * gates["spatial.gate"])


@pytest.mark.parametrize("reduction", [1, 4, 16, 64])
def test_reduction_ratio_sets_the_hidden_width(reduction):
    for module in (ChannelAttention(C, reduction), CBAM(C, reduction).channel, make_attention("se", C, reduction),
                   make_attention("cbam", C, reduction).channel):
        first, _, second = module.mlp
        assert first.in_channels == C and first.out_channels == max(1, C // reduction)
        assert second.in_channels == max(1, C // reduction) and second.out_channels == C


@pytest.mark.parametrize("kernel_size", [1, 3, 7])
def test_kernel_size_sets_the_spatial_conv_and_its_reach(kernel_size):
    for module in (SpatialAttention(kernel_size), CBAM(C, 4, kernel_size).spatial,
                   make_attention("spatial", C, kernel_size=kernel_size).spatial,
                   make_attention("cbam", C, kernel_size=kernel_size).spatial):
        assert module.conv.kernel_size == (kernel_size, kernel_size) and module.conv.in_channels == 2
        assert module.conv.out_channels == 1 and module.conv.padding == (kernel_size // 2, kernel_size // 2)
    # A change at one location moves the spatial map exactly within kernel_size // 2 of it.
    module = SpatialAttention(kernel_size).eval()
    with torch.no_grad():  # small positive weights: no location's gate saturates
        module.conv.weight.fill_(0.1 / kernel_size ** 2)
        module.conv.bias.zero_()
    x = sample_input()
    moved = x.clone()
    moved[:, :, 4, 5] += 5.0
    _, before = gate_outputs(module, x)
    _, after = gate_outputs(module, moved)
    changed = (after["gate"] - before["gate"]).abs()[0, 0] > 1e-7
    reach = kernel_size // 2
    expected = torch.zeros(H, W, dtype=torch.bool)
    expected[4 - reach:4 + reach + 1, 5 - reach:5 + reach + 1] = True
    assert torch.equal(changed, expected)


@pytest.mark.parametrize("kernel_size", [2, 4, 8])
def test_even_kernel_sizes_are_rejected(kernel_size):
    with pytest.raises(ValueError, match="odd"):
        SpatialAttention(kernel_size)
    with pytest.raises(ValueError, match="odd"):
        CBAM(C, kernel_size=kernel_size)
    with pytest.raises(ValueError, match="odd"):
        make_attention("spatial", C, kernel_size=kernel_size)


def test_unknown_attention_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown attention"):
        make_attention("transformer", C)


def test_se_matches_the_chapter_formula():
    """s = sigmoid(W2 relu(W1 avgpool(x))), out = x * s, computed by hand in float64 numpy."""
    module = ChannelAttention(C, reduction=4).eval()
    x = sample_input()
    out, gates = gate_outputs(module, x)
    w1 = module.mlp[0].weight.detach().double().numpy()[:, :, 0, 0]  # (C/r, C)
    b1 = module.mlp[0].bias.detach().double().numpy()
    w2 = module.mlp[2].weight.detach().double().numpy()[:, :, 0, 0]  # (C, C/r)
    b2 = module.mlp[2].bias.detach().double().numpy()
    xs = x.double().numpy()
    for image in range(B):
        pooled = xs[image].mean(axis=(1, 2))                     # (C,)
        hidden = np.maximum(w1 @ pooled + b1, 0.0)               # (C/r,)
        s = 1.0 / (1.0 + np.exp(-(w2 @ hidden + b2)))            # (C,)
        np.testing.assert_allclose(gates["gate"][image, :, 0, 0].numpy(), s, rtol=0, atol=1e-6)
        np.testing.assert_allclose(out[image].detach().numpy(), xs[image] * s[:, None, None], rtol=0, atol=1e-5)


def test_channel_attention_with_max_pool_matches_cbam_formula():
    """s = sigmoid(MLP(avgpool(x)) + MLP(maxpool(x))) with one shared MLP."""
    module = ChannelAttention(C, reduction=4, use_max_pool=True).eval()
    x = sample_input()
    _, gates = gate_outputs(module, x)
    w1 = module.mlp[0].weight.detach().double().numpy()[:, :, 0, 0]
    b1 = module.mlp[0].bias.detach().double().numpy()
    w2 = module.mlp[2].weight.detach().double().numpy()[:, :, 0, 0]
    b2 = module.mlp[2].bias.detach().double().numpy()
    xs = x.double().numpy()
    for image in range(B):
        def mlp(v):
            return w2 @ np.maximum(w1 @ v + b1, 0.0) + b2
        logits = mlp(xs[image].mean(axis=(1, 2))) + mlp(xs[image].max(axis=(1, 2)))
        np.testing.assert_allclose(gates["gate"][image, :, 0, 0].numpy(), 1 / (1 + np.exp(-logits)), atol=1e-6)


def test_spatial_attention_matches_the_chapter_formula():
    """m = sigmoid(conv_k([mean_c(x); max_c(x)])) with zero padding k // 2, out = x * m: the
    cross-correlation written out as loops in float64 numpy."""
    k = 5
    module = SpatialAttention(kernel_size=k).eval()
    x = sample_input()
    out, gates = gate_outputs(module, x)
    weight = module.conv.weight.detach().double().numpy()[0]  # (2, k, k): [mean, max]
    bias = float(module.conv.bias.detach().double().numpy()[0])
    xs = x.double().numpy()
    pad = k // 2
    for image in range(B):
        pooled = np.stack([xs[image].mean(axis=0), xs[image].max(axis=0)])  # (2, H, W)
        padded = np.pad(pooled, ((0, 0), (pad, pad), (pad, pad)))
        logits = np.empty((H, W))
        for row in range(H):
            for col in range(W):
                logits[row, col] = bias + sum(weight[c, i, j] * padded[c, row + i, col + j]
                                              for c in range(2) for i in range(k) for j in range(k))
        m = 1.0 / (1.0 + np.exp(-logits))
        np.testing.assert_allclose(gates["gate"][image, 0].numpy(), m, rtol=0, atol=1e-6)
        np.testing.assert_allclose(out[image].detach().numpy(), xs[image] * m[None], rtol=0, atol=1e-5)


@pytest.mark.parametrize("channel_first", [True, False])
def test_cbam_applies_its_parts_in_the_configured_order(channel_first):
    module = CBAM(C, 4, 5, channel_first=channel_first).eval()
    x = sample_input()
    with torch.no_grad():
        expected = (module.spatial(module.channel(x)) if channel_first else module.channel(module.spatial(x)))
        other = (module.channel(module.spatial(x)) if channel_first else module.spatial(module.channel(x)))
        torch.testing.assert_close(module(x), expected)
    assert not torch.allclose(expected, other, atol=1e-4), "the two orders should differ"


def onnx_run(module: nn.Module, x: torch.Tensor) -> np.ndarray:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), buffer, dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"])
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x.numpy()})[0]


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_module_exports_to_onnx_and_matches_torch(name):
    module = modules()[name].eval()
    x = sample_input()
    with torch.no_grad():
        expected = module(x).numpy()
    actual = onnx_run(module, x)
    difference = float(np.abs(actual - expected).max())
    print(f"ONNX max |diff| {name}: {difference:.2e}")
    assert actual.shape == expected.shape
    assert difference <= 1e-5


NETWORK_SIZE = 96
NETWORK_CLASSES = 5


@pytest.fixture(scope="module")
def imagenet_backbone_and_photos() -> tuple[nn.Module, torch.Tensor]:
    """The built-in ImageNet weights (shipped in a package, no download) and two photos preprocessed
    as served at NETWORK_SIZE. With random weights, or on uniform noise, EfficientNet's head output
    can fade to (almost) nothing, which would make any logit comparison pass."""
    spec, network = load_builtin("efficientnet_lite0")
    batch, _ = imaging.preprocess([chelsea(), coffee()], replace(spec, input_size=NETWORK_SIZE))
    return network, torch.from_numpy(batch)


@pytest.mark.parametrize("kind, stages", [("none", 1), ("se", 1), ("se", 2), ("spatial", 1), ("spatial", 2),
                                          ("cbam", 1), ("cbam", 2)])
def test_efficientnet_lite_with_attention_runs_names_its_modules_and_exports(kind, stages, tmp_path,
                                                                            imagenet_backbone_and_photos):
    backbone, x = imagenet_backbone_and_photos
    torch.manual_seed(0)
    network = build_network("efficientnet_lite0", NETWORK_CLASSES, NETWORK_SIZE, attention=kind,
                            attention_stages=stages)
    transfer_backbone(backbone, network)  # as fine-tuning does: new classifier and attention
    network.eval()
    expected_modules = ["attention.after_head", "attention.after_block_15"][:stages] if kind != "none" else []
    assert attention_modules(network) == expected_modules
    has_spatial = kind in ("spatial", "cbam")
    assert spatial_gates(network) == ([f"{m}.spatial.gate" for m in expected_modules] if has_spatial else [])
    assert network.cam_layer == ("attention.after_head" if expected_modules else "head")
    if kind == "cbam":
        assert all(isinstance(network.get_submodule(m), CBAM) for m in expected_modules)
    if kind == "se":
        assert all(isinstance(network.get_submodule(m), ChannelAttention) for m in expected_modules)

    named = dict(network.named_modules())
    captured = {}
    handles = [named[gate].register_forward_hook(lambda m, i, o, gate=gate: captured.__setitem__(gate, o))
               for gate in spatial_gates(network)]
    with torch.no_grad():
        features = network.forward_features(x)
        logits = network.forward_head(features)
    for handle in handles:
        handle.remove()
    assert logits.shape == (2, NETWORK_CLASSES) and torch.isfinite(logits).all()
    side = -(-NETWORK_SIZE // 32)
    assert features.shape == (2, 1280, side, side)
    assert set(captured) == set(spatial_gates(network))
    for gate, value in captured.items():  # every gate here sits at stride 32
        assert value.shape == (2, 1, side, side) and (value > 0).all() and (value < 1).all(), gate

    path = tmp_path / "network.onnx"
    export_onnx(network, NETWORK_SIZE, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_logits, onnx_features = session.run(None, {"input": x.numpy()})
    difference = float(np.abs(onnx_logits - logits.numpy()).max())
    print(f"ONNX max |logit diff| efficientnet_lite0 {kind} stages={stages}: {difference:.2e} "
          f"(logits up to {logits.abs().max():.3g}, features up to {features.abs().max():.3g})")
    assert features.abs().max() > 0.1, "a vanishing feature map makes the comparison meaningless"
    assert difference <= 1e-4
    np.testing.assert_allclose(onnx_features, features.numpy(), rtol=0, atol=1e-4)
