"""Activation maximization: gradient ascent on an input image, with L2, total-variation and
blur regularization and random jitter, in pixel space or a decorrelated Fourier basis
(as in Olah et al., "Feature Visualization", 2017). Several targets run as one batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from core.errors import InvalidRequest, UnknownLayer
from core.explain.base import capture
from core.explain.baselines import gaussian_blur
from core.jobs import JobCancelled
from core.models.registry import targetable_layers
from core.models.spec import ModelSpec

PARAMETERIZATIONS = ("pixel", "fft")
# Square root of ImageNet's colour correlation (from the Lucid feature-visualization library).
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOR_SQRT = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()


@dataclass(frozen=True)
class MaximizationConfig:
    classes: tuple[int, ...] = ()
    layer: str | None = None
    channels: tuple[int, ...] = ()
    steps: int = 200
    lr: float = 0.05
    l2: float = 1e-3
    tv: float = 1e-3
    blur_sigma: float = 0.5
    blur_every: int = 4
    jitter: int = 8
    size: int | None = None
    seed: int = 0
    parameterization: str = "fft"


@dataclass
class MaximizationResult:
    images: np.ndarray                  # (targets, size, size, 3) uint8
    activations: list[float]            # final activation per target
    history: list[list[float]]          # per step, the activation of each target
    probabilities: list[float | None] = field(default_factory=list)  # class targets: p(class)


class _Image(nn.Module):
    """The optimized parameters and how they render to RGB in [0, 1]."""

    def __init__(self, count: int, size: int, parameterization: str, generator: torch.Generator) -> None:
        super().__init__()
        self.size = size
        self.fft = parameterization == "fft"
        if self.fft:
            fy = torch.fft.fftfreq(size)[:, None]
            fx = torch.fft.rfftfreq(size)[None, :]
            self.register_buffer("scale", 1.0 / torch.sqrt(fy**2 + fx**2).clamp(min=1.0 / size))
            shape = (count, 3, size, size // 2 + 1, 2)
            self.param = nn.Parameter(torch.randn(shape, generator=generator) * 0.01)
        else:
            self.param = nn.Parameter(torch.randn((count, 3, size, size), generator=generator) * 0.01)

    def logits_image(self) -> torch.Tensor:
        """The image before the sigmoid (decorrelated colours for fft)."""
        if not self.fft:
            return self.param
        spectrum = torch.view_as_complex(self.param) * self.scale
        decorrelated = torch.fft.irfft2(spectrum, s=(self.size, self.size), norm="ortho") * 4.0
        return torch.einsum("ij,bjhw->bihw", _COLOR_SQRT.to(decorrelated), decorrelated)

    def forward(self) -> torch.Tensor:
        return torch.sigmoid(self.logits_image())

    @torch.no_grad()
    def set_from(self, rgb: torch.Tensor) -> None:
        """Make the parameters render `rgb` (used to apply a blur)."""
        logits = torch.logit(rgb.clamp(1e-4, 1 - 1e-4))
        if not self.fft:
            self.param.copy_(logits)
            return
        decorrelated = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_COLOR_SQRT.to(logits)), logits) / 4.0
        spectrum = torch.fft.rfft2(decorrelated, norm="ortho") / self.scale
        self.param.copy_(torch.view_as_real(spectrum))


def total_variation(images: torch.Tensor) -> torch.Tensor:
    return ((images[..., 1:, :] - images[..., :-1, :]).abs().mean(dim=(1, 2, 3))
            + (images[..., :, 1:] - images[..., :, :-1]).abs().mean(dim=(1, 2, 3)))


def validate(config: MaximizationConfig, spec: ModelSpec, network: nn.Module) -> None:
    if bool(config.classes) == bool(config.layer):
        raise InvalidRequest("give either classes or a layer with channels", field="target")
    for cls in config.classes:
        if not 0 <= cls < spec.num_classes:
            raise InvalidRequest(f"class {cls} is out of range 0..{spec.num_classes - 1}", field="target")
    if config.layer:
        layers = targetable_layers(network, spec.input_size)
        if config.layer not in layers:
            raise UnknownLayer(f"the model has no targetable layer {config.layer!r} (one that outputs a "
                               f"feature map once per forward)", field="target.layer", valid=list(layers))
        channels = _channel_count(network, config.layer, spec.input_size)
        if not config.channels:
            raise InvalidRequest("a layer target needs at least one channel", field="target.channels")
        for channel in config.channels:
            if not 0 <= channel < channels:
                raise InvalidRequest(f"layer {config.layer!r} has channels 0..{channels - 1}, not {channel}",
                                     field="target.channels")
    if config.parameterization not in PARAMETERIZATIONS:
        raise InvalidRequest(f"parameterization must be one of {PARAMETERIZATIONS}", field="parameterization")


def _channel_count(network: nn.Module, layer: str, input_size: int) -> int:
    """Channels of the feature map `layer` outputs."""
    with capture(network, layer) as captured, torch.no_grad():
        device = next(network.parameters()).device
        network(torch.zeros(1, 3, input_size, input_size, device=device))
    return captured.activation.shape[1]


def maximize(network: nn.Module, spec: ModelSpec, config: MaximizationConfig,
             progress: Callable[..., None], should_stop: Callable[[], bool]) -> MaximizationResult:
    validate(config, spec, network)
    device = next(network.parameters()).device
    size = config.size or spec.input_size
    count = len(config.classes) or len(config.channels)
    generator = torch.Generator().manual_seed(config.seed)
    image = _Image(count, size, config.parameterization, generator).to(device)
    optimizer = torch.optim.Adam(image.parameters(), lr=config.lr)
    mean = torch.tensor(spec.mean, device=device)[None, :, None, None]
    std = torch.tensor(spec.std, device=device)[None, :, None, None]
    rows = torch.arange(count, device=device)
    targets = torch.tensor(config.classes or config.channels, device=device)
    parameters = list(image.parameters())
    was_training = network.training
    network.eval()

    def logits(rgb: torch.Tensor) -> torch.Tensor:
        return network((rgb * 255.0 - mean) / std)

    def activation(rgb: torch.Tensor) -> torch.Tensor:
        if config.classes:
            return logits(rgb)[rows, targets]
        with capture(network, config.layer) as captured:
            logits(rgb)
        return captured.activation[rows, targets].mean(dim=(1, 2))

    history: list[list[float]] = []
    try:
        for step in range(config.steps):
            if should_stop():
                raise JobCancelled()
            with torch.enable_grad():
                rgb = image()
                shift = torch.randint(-config.jitter, config.jitter + 1, (2,), generator=generator).tolist() \
                    if config.jitter else [0, 0]
                reached = activation(torch.roll(rgb, shifts=shift, dims=(2, 3)))
                loss = (-reached + config.l2 * ((rgb - 0.5) ** 2).mean(dim=(1, 2, 3))
                        + config.tv * total_variation(rgb)).sum()
                # Gradients for the image only: the network's parameters and their .grad stay as they were.
                for parameter, gradient in zip(parameters, torch.autograd.grad(loss, parameters)):
                    parameter.grad = gradient
                optimizer.step()
            if config.blur_sigma > 0 and config.blur_every and (step + 1) % config.blur_every == 0:
                with torch.no_grad():
                    image.set_from(gaussian_blur(image(), config.blur_sigma))
            history.append([round(value, 4) for value in reached.detach().cpu().tolist()])
            progress((step + 1) / config.steps, step=step + 1, steps=config.steps,
                     metrics={"activation": history[-1]})
        with torch.no_grad():
            rgb = image()
            probabilities: list[float | None] = [None] * count
            if config.classes:
                scores = logits(rgb)
                final = scores[rows, targets]
                probabilities = torch.softmax(scores.float(), dim=1)[rows, targets].cpu().tolist()
            else:
                final = activation(rgb)
    finally:
        network.train(was_training)
    pixels = (rgb.permute(0, 2, 3, 1).cpu().numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
    return MaximizationResult(pixels, final.cpu().tolist(), history, probabilities)

