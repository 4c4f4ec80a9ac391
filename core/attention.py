"""Attention modules for CNN feature maps.

Channel attention (squeeze-and-excitation, Hu et al. 2018):
    s = g(W2 relu(W1 avgpool(x))),  out = x * s          (W1 reduces C to C / r)
CBAM's channel attention (Woo et al. 2018) adds a max-pooled branch through the same MLP:
    s = g(MLP(avgpool(x)) + MLP(maxpool(x)))
Spatial attention (CBAM):
    m = g(conv_k([mean_c(x); max_c(x)])),  out = x * m   (m is one map over locations)
CBAM: channel attention, then spatial attention (order configurable).

The gate g has two forms (`GATE_FORMS`):
- `residual` (the default): g(z) = 1 + tanh(z), a multiplier in (0, 2), and the layer that
  makes z starts at zero, so a new module is exactly the identity (x * 1): inserting it leaves
  a pretrained network's outputs as they were, and training moves each location or channel up
  or down from there. The spatial gate sees its two pooled maps standardized over locations
  (zero mean, unit variance per image), and the channel gate's z is divided by the square root
  of its hidden width: without that, one AdamW step at the head's learning rate moved z by
  several units on EfficientNet-Lite0's head (ReLU6 features, 1280 channels), tanh saturated
  and a gate stuck at 0 everywhere cut the features off for good (measured on Tuxpaint: the
  spatial gate 0 on every image, validation accuracy 0.36 instead of 0.89). Standardized, the
  spatial gate can only move locations relative to each other; its bias moves them all.
- `sigmoid`: g(z) = sigmoid(z), a multiplier in (0, 1) from a random start (the papers' form;
  models saved before the residual form existed use it: ModelSpec.attention_gate).
Both forms have the same parameters (and state-dict keys); only the spec says which one a
saved model's weights were trained with.

Each gate is its own module (`...gate`), so its output, the multiplier itself, can be captured
with a forward hook like any layer; the modules keep no state between calls.
"""

from __future__ import annotations

import torch
from torch import nn

from core.names import ATTENTION_KINDS

GATE_FORMS = ("residual", "sigmoid")


class ResidualGate(nn.Module):
    """1 + tanh(z): 1 (the identity) at z = 0, in (0, 2)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return 1 + torch.tanh(z)


def _gate(form: str) -> nn.Module:
    if form == "residual":
        return ResidualGate()
    if form == "sigmoid":
        return nn.Sigmoid()
    raise ValueError(f"unknown attention gate {form!r}; known: {', '.join(GATE_FORMS)}")


def _start_at_zero(layer: nn.Conv2d) -> None:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)


class ChannelAttention(nn.Module):
    def __init__(self, channels: int, reduction: int = 16, use_max_pool: bool = False,
                 gate: str = "residual") -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, channels, 1))
        self.use_max_pool = use_max_pool
        self.gate = _gate(gate)
        self.scale = hidden ** -0.5 if gate == "residual" else 1.0
        if gate == "residual":
            _start_at_zero(self.mlp[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        if self.use_max_pool:
            logits = logits + self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return x * self.gate(logits * self.scale)


class SpatialAttention(nn.Module):
    def __init__(self, kernel_size: int = 7, gate: str = "residual") -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError("the spatial attention kernel size must be odd")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)
        self.gate = _gate(gate)
        self.residual = gate == "residual"
        if self.residual:
            _start_at_zero(self.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        if self.residual:
            pooled = standardized(pooled)
        return x * self.gate(self.conv(pooled))


def standardized(maps: torch.Tensor) -> torch.Tensor:
    """Each (image, channel) map shifted and scaled to zero mean and unit variance over locations."""
    centred = maps - maps.mean(dim=(2, 3), keepdim=True)
    return centred / torch.sqrt(centred.pow(2).mean(dim=(2, 3), keepdim=True) + 1e-5)


class CBAM(nn.Module):
    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7, channel_first: bool = True,
                 gate: str = "residual") -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction, use_max_pool=True, gate=gate)
        self.spatial = SpatialAttention(kernel_size, gate)
        self.channel_first = channel_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_first:
            return self.spatial(self.channel(x))
        return self.channel(self.spatial(x))


def make_attention(kind: str, channels: int, reduction: int = 16, kernel_size: int = 7,
                   gate: str = "residual") -> nn.Module:
    if kind == "se":
        return ChannelAttention(channels, reduction, gate=gate)
    if kind == "spatial":
        return _Spatial(kernel_size, gate)
    if kind == "cbam":
        return CBAM(channels, reduction, kernel_size, gate=gate)
    raise ValueError(f"unknown attention {kind!r}; known: {', '.join(ATTENTION_KINDS)}")


class _Spatial(nn.Module):
    """Spatial attention alone, named like CBAM's part (`spatial.gate`) so maps are found alike."""

    def __init__(self, kernel_size: int, gate: str = "residual") -> None:
        super().__init__()
        self.spatial = SpatialAttention(kernel_size, gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(x)


def spatial_gates(network: nn.Module) -> list[str]:
    """Names of the spatial attention gates in a network, in registration order (for
    EfficientNetLite: the one nearest the classifier first)."""
    return [f"{name}.gate" for name, module in network.named_modules() if isinstance(module, SpatialAttention)]


def attention_modules(network: nn.Module) -> list[str]:
    kinds = (ChannelAttention, SpatialAttention, CBAM, _Spatial)
    names = [name for name, module in network.named_modules() if isinstance(module, kinds)]
    # a CBAM's own parts are listed through the CBAM
    return [name for name in names if not any(name.startswith(other + ".") for other in names if other != name)]


def choose_points(points: list[tuple[str, int, int]], stages: int, stride: int | None) -> list[tuple[str, int]]:
    """Where attention goes, from the network's candidate points (name, channels, stride: input
    side / feature side), top first: the top `stages` of them, or with `stride`, the top `stages`
    of those at that stride (16: the 14 x 14 stages of a 224 px input)."""
    if stride is not None:
        strides = sorted({point_stride for _, _, point_stride in points})
        points = [point for point in points if point[2] == stride]
        if not points:
            raise ValueError(f"no stage at stride {stride}; the network has strides {strides}")
    return [(name, channels) for name, channels, _ in points[:stages]]
