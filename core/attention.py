"""Attention modules for CNN feature maps.

Channel attention (squeeze-and-excitation, Hu et al. 2018):
    s = sigmoid(W2 relu(W1 avgpool(x))),  out = x * s          (W1 reduces C to C / r)
CBAM's channel attention (Woo et al. 2018) adds a max-pooled branch through the same MLP:
    s = sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))
Spatial attention (CBAM):
    m = sigmoid(conv_k([mean_c(x); max_c(x)])),  out = x * m   (m is one map over locations)
CBAM: channel attention, then spatial attention (order configurable).

Each gate is its own `nn.Sigmoid` module (`...gate`), so its output can be captured with a
forward hook like any layer; the modules keep no state between calls.
"""

from __future__ import annotations

import torch
from torch import nn

from core.names import ATTENTION_KINDS


class ChannelAttention(nn.Module):
    def __init__(self, channels: int, reduction: int = 16, use_max_pool: bool = False) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, channels, 1))
        self.use_max_pool = use_max_pool
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        if self.use_max_pool:
            logits = logits + self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return x * self.gate(logits)


class SpatialAttention(nn.Module):
    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError("the spatial attention kernel size must be odd")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * self.gate(self.conv(pooled))


class CBAM(nn.Module):
    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7, channel_first: bool = True) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction, use_max_pool=True)
        self.spatial = SpatialAttention(kernel_size)
        self.channel_first = channel_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_first:
            return self.spatial(self.channel(x))
        return self.channel(self.spatial(x))


def make_attention(kind: str, channels: int, reduction: int = 16, kernel_size: int = 7) -> nn.Module:
    if kind == "se":
        return ChannelAttention(channels, reduction)
    if kind == "spatial":
        return _Spatial(kernel_size)
    if kind == "cbam":
        return CBAM(channels, reduction, kernel_size)
    raise ValueError(f"unknown attention {kind!r}; known: {', '.join(ATTENTION_KINDS)}")


class _Spatial(nn.Module):
    """Spatial attention alone, named like CBAM's part (`spatial.gate`) so maps are found alike."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.spatial = SpatialAttention(kernel_size)

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
