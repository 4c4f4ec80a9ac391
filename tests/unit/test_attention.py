"""Attention modules (core.attention) and EfficientNet-Lite with attention: shapes, gradients, gate
ranges and shapes, hyper-parameters, the chapter formulas against a hand computation (both gate
forms), ONNX export; residual gates start as the identity (a pretrained network's logits stay as they
were); placement by stride; old specs keep their sigmoid gates; the attention map's raw gate range and
flat flag."""

from __future__ import annotations

import io
import warnings
from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from core.attention import (CBAM, GATE_FORMS, ChannelAttention, ResidualGate, SpatialAttention,
                            attention_modules, make_attention, spatial_gates)
from core import imaging
from core.models.architectures import build_network
from core.models.catalog import load_builtin
from core.models.onnx_export import export_onnx
from core.training.finetune import transfer_backbone
from support import chelsea, coffee

B, C, H, W = 2, 32, 9, 11  # H != W catches transposed maps


def fresh_modules(gate: str) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "se": ChannelAttention(C, reduction=4, gate=gate),
        "se_maxpool": ChannelAttention(C, reduction=4, use_max_pool=True, gate=gate),
        "spatial": SpatialAttention(kernel_size=5, gate=gate),
        "cbam_channel_first": CBAM(C, reduction=4, kernel_size=5, channel_first=True, gate=gate),
        "cbam_spatial_first": CBAM(C, reduction=4, kernel_size=5, channel_first=False, gate=gate),
        "make_se": make_attention("se", C, gate=gate),
        "make_spatial": make_attention("spatial", C, gate=gate),
        "make_cbam": make_attention("cbam", C, gate=gate),
    }


def randomized(module: nn.Module) -> nn.Module:
    """Every conv re-drawn at PyTorch's default init: residual gates start at exactly 1, which
    would make the formula and gradient checks below trivial; trained gates are not 1."""
    torch.manual_seed(3)
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            layer.reset_parameters()
    return module


def modules(gate: str = "sigmoid") -> dict[str, nn.Module]:
    return {name: randomized(module) for name, module in fresh_modules(gate).items()}


MODULE_NAMES = list(fresh_modules("sigmoid"))
CASES = [(name, gate) for gate in GATE_FORMS for name in MODULE_NAMES]
GATE_FUNCTIONS = {"sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)), "residual": lambda z: 1.0 + np.tanh(z)}
GATE_BOUNDS = {"sigmoid": (0.0, 1.0), "residual": (0.0, 2.0)}
# residual channel gates: the zero-started layer's output divided by the square root of its fan-in
SCALES = {"sigmoid": lambda fan_in: 1.0, "residual": lambda fan_in: fan_in ** -0.5}


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


@pytest.mark.parametrize("name, gate", CASES)
def test_output_shape_is_the_input_shape(name, gate):
    module = modules(gate)[name]
    x = sample_input()
    assert module(x).shape == x.shape


@pytest.mark.parametrize("name, gate", CASES)
def test_gradients_reach_the_input_and_every_parameter(name, gate):
    module = modules(gate)[name]
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


@pytest.mark.parametrize("name, gate", CASES)
def test_gates_lie_strictly_within_their_form_s_bounds_with_the_documented_shapes(name, gate):
    module = modules(gate)[name].eval()
    low, high = GATE_BOUNDS[gate]
    x = sample_input()
    _, gates = gate_outputs(module, x)
    kinds = gate_kinds(module)
    assert set(gates) == set(kinds) and gates
    for gate_name, value in gates.items():
        expected = (B, C, 1, 1) if kinds[gate_name] == "channel" else (B, 1, H, W)
        assert tuple(value.shape) == expected, (gate_name, value.shape)
        assert (value > low).all() and (value < high).all(), gate_name
        assert value.std() > 1e-3, f"{gate_name} is constant: the check above would be trivial"
    if name.startswith(("cbam", "make_cbam")):
        assert set(kinds.values()) == {"channel", "spatial"}


@pytest.mark.parametrize("gate", GATE_FORMS)
def test_gates_are_what_multiplies_the_input(gate):
    """out == x * channel gate (SE) and out == x * spatial gate (spatial attention)."""
    x = sample_input()
    for module in (ChannelAttention(C, 4, gate=gate), SpatialAttention(5, gate=gate),
                   ChannelAttention(C, 4, use_max_pool=True, gate=gate)):
        out, gates = gate_outputs(randomized(module).eval(), x)
        torch.testing.assert_close(out, x * gates["gate"])
    cbam = randomized(CBAM(C, 4, 5, channel_first=True, gate=gate)).eval()
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
    module = SpatialAttention(kernel_size, gate="sigmoid").eval()  # the residual form standardizes: global
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


@pytest.mark.parametrize("gate", GATE_FORMS)
def test_se_matches_the_chapter_formula(gate):
    """s = g(W2 relu(W1 avgpool(x))), out = x * s, computed by hand in float64 numpy (g: sigmoid,
    or 1 + tanh of z / sqrt(fan-in))."""
    g = GATE_FUNCTIONS[gate]
    module = randomized(ChannelAttention(C, reduction=4, gate=gate)).eval()
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
        s = g((w2 @ hidden + b2) * SCALES[gate](w1.shape[0]))   # (C,)
        np.testing.assert_allclose(gates["gate"][image, :, 0, 0].numpy(), s, rtol=0, atol=1e-6)
        np.testing.assert_allclose(out[image].detach().numpy(), xs[image] * s[:, None, None], rtol=0, atol=1e-5)


@pytest.mark.parametrize("gate", GATE_FORMS)
def test_channel_attention_with_max_pool_matches_cbam_formula(gate):
    """s = g(MLP(avgpool(x)) + MLP(maxpool(x))) with one shared MLP."""
    module = randomized(ChannelAttention(C, reduction=4, use_max_pool=True, gate=gate)).eval()
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
        logits = (mlp(xs[image].mean(axis=(1, 2))) + mlp(xs[image].max(axis=(1, 2)))) * SCALES[gate](w1.shape[0])
        np.testing.assert_allclose(gates["gate"][image, :, 0, 0].numpy(), GATE_FUNCTIONS[gate](logits), atol=1e-6)


@pytest.mark.parametrize("gate", GATE_FORMS)
def test_spatial_attention_matches_the_chapter_formula(gate):
    """m = g(conv_k([mean_c(x); max_c(x)])) with zero padding k // 2, out = x * m: the
    cross-correlation written out as loops in float64 numpy."""
    k = 5
    module = randomized(SpatialAttention(kernel_size=k, gate=gate)).eval()
    x = sample_input()
    out, gates = gate_outputs(module, x)
    weight = module.conv.weight.detach().double().numpy()[0]  # (2, k, k): [mean, max]
    bias = float(module.conv.bias.detach().double().numpy()[0])
    xs = x.double().numpy()
    pad = k // 2
    for image in range(B):
        pooled = np.stack([xs[image].mean(axis=0), xs[image].max(axis=0)])  # (2, H, W)
        if gate == "residual":  # each pooled map standardized over locations
            pooled = (pooled - pooled.mean(axis=(1, 2), keepdims=True)) / np.sqrt(
                pooled.var(axis=(1, 2), keepdims=True) + 1e-5)
        padded = np.pad(pooled, ((0, 0), (pad, pad), (pad, pad)))
        logits = np.empty((H, W))
        for row in range(H):
            for col in range(W):
                logits[row, col] = bias + sum(weight[c, i, j] * padded[c, row + i, col + j]
                                              for c in range(2) for i in range(k) for j in range(k))
        m = GATE_FUNCTIONS[gate](logits)
        np.testing.assert_allclose(gates["gate"][image, 0].numpy(), m, rtol=0, atol=1e-6)
        np.testing.assert_allclose(out[image].detach().numpy(), xs[image] * m[None], rtol=0, atol=1e-5)


@pytest.mark.parametrize("channel_first", [True, False])
def test_cbam_applies_its_parts_in_the_configured_order(channel_first):
    module = randomized(CBAM(C, 4, 5, channel_first=channel_first)).eval()
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


@pytest.mark.parametrize("name, gate", CASES)
def test_module_exports_to_onnx_and_matches_torch(name, gate):
    module = modules(gate)[name].eval()
    x = sample_input()
    with torch.no_grad():
        expected = module(x).numpy()
    actual = onnx_run(module, x)
    difference = float(np.abs(actual - expected).max())
    print(f"ONNX max |diff| {name} {gate}: {difference:.2e}")
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
        assert value.shape == (2, 1, side, side) and torch.equal(value, torch.ones_like(value)), gate  # fresh: 1

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


# --- residual gates start as the identity -----------------------------------------------------------------

@pytest.mark.parametrize("name", MODULE_NAMES)
def test_a_fresh_residual_module_is_exactly_the_identity_and_still_learns(name):
    module = fresh_modules("residual")[name]
    x = sample_input(requires_grad=True)
    out, gates = gate_outputs(module.eval(), x.detach())
    assert torch.equal(out, x.detach()) and all(torch.equal(g, torch.ones_like(g)) for g in gates.values())
    projection = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(7))
    (module(x) * projection).sum().backward()
    # the zero-initialized layer that makes the gate's input gets a gradient, so it moves off 1
    last = [layer for layer in module.modules() if isinstance(layer, nn.Conv2d) and layer.out_channels in (1, C)]
    assert last and all(layer.weight.grad.abs().sum() > 0 for layer in last)


PLACEMENTS = [("se", 1, None), ("spatial", 1, 16), ("cbam", 3, None), ("cbam", 2, 16)]


@pytest.fixture(scope="module")
def imagenet_logits_224() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    spec, network = load_builtin("efficientnet_lite0")
    batch = torch.from_numpy(imaging.preprocess([chelsea(), coffee()], spec)[0])
    with torch.no_grad():
        return network, batch, network(batch)


def with_attention(base: nn.Module, kind: str, stages: int, stride: int | None, gate: str) -> nn.Module:
    """EfficientNet-Lite0 with attention and every pretrained weight, the ImageNet classifier too."""
    torch.manual_seed(0)
    network = build_network("efficientnet_lite0", 1000, 224, attention=kind, attention_stages=stages,
                            attention_gate=gate, attention_stride=stride)
    missing, unexpected = network.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and missing and all(key.startswith("attention.") for key in missing)
    return network.eval()


@pytest.mark.parametrize("kind, stages, stride", PLACEMENTS)
def test_inserting_residual_attention_into_pretrained_efficientnet_leaves_its_logits_unchanged(
        kind, stages, stride, imagenet_logits_224):
    base, batch, expected = imagenet_logits_224
    with torch.no_grad():
        logits = with_attention(base, kind, stages, stride, "residual")(batch)
    difference = float((logits - expected).abs().max())
    print(f"residual {kind} stages={stages} stride={stride}: max |logit diff| {difference:.1e} "
          f"(logits up to {expected.abs().max():.1f})")
    assert difference <= 1e-5


def test_the_sigmoid_gate_disturbs_the_pretrained_network_which_is_what_the_residual_form_avoids(
        imagenet_logits_224):
    """The same check fails for the papers' form (measured: logits move by up to 9, of 11): the test
    above can fail."""
    base, batch, expected = imagenet_logits_224
    with torch.no_grad():
        logits = with_attention(base, "cbam", 1, None, "sigmoid")(batch)
    assert float((logits - expected).abs().max()) > 1.0


def test_attention_stride_places_attention_on_the_14x14_stages():
    network = build_network("efficientnet_lite0", 3, 224, attention="spatial", attention_stride=16)
    assert attention_modules(network) == ["attention.after_block_10"]
    captured = {}
    gate = network.get_submodule(spatial_gates(network)[0])
    handle = gate.register_forward_hook(lambda m, i, o: captured.setdefault("gate", o))
    with torch.no_grad():
        network.eval()(torch.zeros(1, 3, 224, 224))
    handle.remove()
    assert captured["gate"].shape == (1, 1, 14, 14)
    assert attention_modules(build_network("efficientnet_lite0", 3, 224, attention="cbam", attention_stages=2,
                                           attention_stride=16)) == ["attention.after_block_10",
                                                                     "attention.after_block_7"]
    assert attention_modules(build_network("efficientnet_lite0", 3, 224, attention="se", attention_stride=32,
                                           attention_stages=7)) == ["attention.after_head", "attention.after_block_15",
                                                                    "attention.after_block_14"]
    assert attention_modules(build_network("resnet18", 3, 64, attention="spatial", attention_stride=16)) == \
        ["attention.after_layer3_1"]
    with pytest.raises(ValueError, match="no stage at stride 64"):
        build_network("efficientnet_lite0", 3, 224, attention="spatial", attention_stride=64)


def test_specs_saved_before_the_residual_gate_keep_their_sigmoid_gates():
    """A spec written before attention_gate existed means the sigmoid gate its weights were trained
    with; built from it, the network computes what it computed then."""
    import json

    from core.models.registry import build_for
    from core.models.spec import ModelSpec

    spec, _ = load_builtin("efficientnet_lite0")
    raw = json.loads(replace(spec, id="old", labels=("a", "b"), input_size=64, attention_type="cbam").to_json())
    del raw["attention_gate"], raw["attention_stride"]
    old = ModelSpec.from_json(json.dumps(raw))
    assert old.attention_gate == "sigmoid" and old.attention_stride is None
    network = build_for(old)
    gates = [module for name, module in network.named_modules() if name.endswith(".gate")]
    assert gates and all(isinstance(module, nn.Sigmoid) for module in gates)
    torch.manual_seed(1)
    trained = build_network("efficientnet_lite0", 2, 64, attention="cbam", attention_gate="sigmoid").eval()
    network.load_state_dict(trained.state_dict())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(network.eval()(x), trained(x))
    new = build_for(replace(old, attention_gate="residual"))
    assert all(isinstance(module, ResidualGate) for name, module in new.named_modules() if name.endswith(".gate"))


# --- the attention map: the raw gate's range, and flat gates shown as zeros ---------------------------------

def tiny_network(bias: float, weight: float) -> nn.Module:
    """conv -> spatial attention (residual gate, conv set by hand) -> GAP -> linear."""
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.features = nn.Conv2d(3, 8, 3, padding=1)
            self.attention = make_attention("spatial", 8, kernel_size=3)
            self.classifier = nn.Linear(8, 4)
            with torch.no_grad():
                self.attention.spatial.conv.weight.fill_(weight)
                self.attention.spatial.conv.bias.fill_(bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.classifier(self.attention(self.features(x)).mean(dim=(2, 3)))
    return Tiny().eval()


def test_the_attention_map_reports_the_raw_gate_range_and_is_scaled_like_other_maps():
    from core.explain import METHODS

    network = tiny_network(bias=0.1, weight=0.3)
    x = torch.randn(2, 3, 9, 11, generator=torch.Generator().manual_seed(4))
    _, gates = gate_outputs(network.attention, network.features(x).detach())
    raw = gates["spatial.gate"][:, 0]
    explanation = METHODS["attention"](network, x, None, "attention.spatial.gate")
    assert explanation.gates is not None and len(explanation.gates) == 2
    for image, gate in enumerate(explanation.gates):
        assert gate.min == pytest.approx(float(raw[image].min()), abs=1e-6)
        assert gate.max == pytest.approx(float(raw[image].max()), abs=1e-6)
        assert gate.mean == pytest.approx(float(raw[image].mean()), abs=1e-6)
        assert not gate.flat and gate.max - gate.min > 0.05
        expected = (raw[image] - raw[image].min()) / (raw[image].max() - raw[image].min())
        np.testing.assert_allclose(explanation.maps[image], expected.numpy(), atol=1e-5)
    assert METHODS["gradcam"](network, x, None, "attention").gates is None


@pytest.mark.parametrize("weight, flat", [(0.0, True), (1e-4, True), (0.3, False)])
def test_a_nearly_flat_gate_is_flagged_and_shown_as_zeros_not_stretched(weight, flat):
    from core.explain import METHODS
    from core.names import FLAT_GATE_RANGE

    network = tiny_network(bias=0.0, weight=weight)
    x = torch.randn(2, 3, 9, 11, generator=torch.Generator().manual_seed(4))
    explanation = METHODS["attention"](network, x, None, "attention.spatial.gate")
    for image, gate in enumerate(explanation.gates):
        assert gate.flat == flat and (gate.max - gate.min < FLAT_GATE_RANGE) == flat
        assert gate.min <= gate.mean <= gate.max
        if flat:
            assert not explanation.maps[image].any()
        else:
            assert explanation.maps[image].max() == pytest.approx(1.0, abs=1e-5)
    if weight == 0.0:  # a fresh residual gate: exactly 1 everywhere
        assert all(gate.min == gate.max == gate.mean == 1.0 for gate in explanation.gates)
