"""What an activation-maximization run is asked to do: every name, default and bound, once
(the wire model in schemas/jobs.py is generated from these)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from core.names import DEFAULT_MODEL
from core.params import param

Parameterization = Literal["pixel", "fft"]
PARAMETERIZATIONS: tuple[str, ...] = get_args(Parameterization)


@dataclass(frozen=True)
class Target:
    """Either classes (logits) or a layer's channels (mean activation), optimized as one batch."""

    classes: tuple[int, ...] = param((), max_length=64, doc="class indices")
    layer: str | None = param(None, doc="a targetable layer (see GET /v1/models/{model})")
    channels: tuple[int, ...] = param((), max_length=64, doc="channels of `layer`")


@dataclass(frozen=True)
class MaximizationConfig:
    target: Target = param(doc='{"class": N}, {"classes": [...]} or {"layer": NAME, "channels": [...]}')
    model: str = param(DEFAULT_MODEL, doc="NAME or NAME@VERSION")
    steps: int = param(200, ge=1, le=10000)
    lr: float = param(0.05, gt=0, le=10)
    l2: float = param(1e-3, ge=0, le=100, doc="pull towards grey")
    tv: float = param(1e-3, ge=0, le=100, doc="total variation: smoothness")
    blur_sigma: float = param(0.5, ge=0, le=20)
    blur_every: int = param(4, ge=0, le=10000, doc="blur every N steps; 0 = never")
    jitter: int = param(8, ge=0, le=64, doc="random shift, pixels")
    size: int | None = param(None, ge=32, le=512, doc="image side; default the model's input size")
    seed: int = param(0, ge=0, le=2**32 - 1)
    parameterization: Parameterization = param("fft", doc="pixel, or fft: a decorrelated Fourier basis, as Lucid's")

    @property
    def count(self) -> int:
        return len(self.target.classes) or len(self.target.channels)
