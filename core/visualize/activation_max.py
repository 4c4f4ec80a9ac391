"""Activation maximization: gradient ascent on an input image, with L2, total-variation and
blur regularization and random jitter, in pixel space or a decorrelated Fourier basis
(as in Olah et al., "Feature Visualization", 2017). Several targets run as one batch."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import nn

from core import imaging
from core.errors import InvalidRequest, UnknownLayer
from core.explain.base import capture
from core.explain.baselines import gaussian_blur
from core.jobs import JobCancelled, Progress, ShouldStop
from core.models.layers import targetable_layers
from core.models.spec import ModelSpec
from core.names import ONNX_ARCHITECTURE
from core.params import check_params
from core.visualize.config import MaximizationConfig

# Square root of ImageNet's colour correlation (from the Lucid feature-visualization library).
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOR_SQRT = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()


@dataclass
class MaximizationResult:
    images: np.ndarray                  # (targets, size, size, 3) uint8
    activations: list[float]            # final activation per target
    history: list[list[float]]          # per kept step (history_steps), the activation of each target
    probabilities: list[float | None] = field(default_factory=list)  # class targets: p(class)
    history_steps: list[int] = field(default_factory=list)  # the step, from 1, of each history row
    served_probabilities: list[float | None] = field(default_factory=list)  # class targets: p(class) through predict


# Steps the history keeps: a job's record grows with targets x these, not with `steps` (64 targets
# over 10,000 steps made a 5.8 MB record, 578 bytes a step).
MAX_HISTORY_STEPS = 500


def kept_steps(steps: int) -> list[int]:
    """The steps, from 1, whose activations the history keeps: every one up to MAX_HISTORY_STEPS,
    else that many evenly spaced, the first and the last among them."""
    if steps <= MAX_HISTORY_STEPS:
        return list(range(1, steps + 1))
    return [round(1 + index * (steps - 1) / (MAX_HISTORY_STEPS - 1)) for index in range(MAX_HISTORY_STEPS)]


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
        # Lucid's fft_image: an orthonormal inverse FFT, then / 4. Adam is blind to a constant
        # scale, so the constant sets the effective learning rate: at x 4 (16 times Lucid's)
        # the default lr saturated the sigmoid on 30% of the pixels.
        decorrelated = torch.fft.irfft2(spectrum, s=(self.size, self.size), norm="ortho") / 4.0
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
        decorrelated = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_COLOR_SQRT.to(logits)), logits) * 4.0
        spectrum = torch.fft.rfft2(decorrelated, norm="ortho") / self.scale
        self.param.copy_(torch.view_as_real(spectrum))


def total_variation(images: torch.Tensor) -> torch.Tensor:
    return ((images[..., 1:, :] - images[..., :-1, :]).abs().mean(dim=(1, 2, 3))
            + (images[..., :, 1:] - images[..., :, :-1]).abs().mean(dim=(1, 2, 3)))


def validate(config: MaximizationConfig, spec: ModelSpec, layer_channels: dict[str, int]) -> None:
    """`layer_channels`: the model's targetable layers and their channel counts."""
    check_params(config)
    if spec.architecture == ONNX_ARCHITECTURE:
        raise InvalidRequest(f"model {spec.ref!r} is served from ONNX alone: activation maximization needs "
                             f"gradients", field="model")
    target = config.target
    if bool(target.classes) == bool(target.layer):
        raise InvalidRequest("give either classes or a layer with channels", field="target")
    for cls in target.classes:
        if not 0 <= cls < spec.num_classes:
            raise InvalidRequest(f"class {cls} is out of range 0..{spec.num_classes - 1}", field="target")
    if target.layer:
        if target.layer not in layer_channels:
            raise UnknownLayer(f"the model has no targetable layer {target.layer!r} (one that outputs a "
                               f"feature map once per forward)", field="target.layer", valid=list(layer_channels))
        if not target.channels:
            raise InvalidRequest("a layer target needs at least one channel", field="target.channels")
        channels = layer_channels[target.layer]
        for channel in target.channels:
            if not 0 <= channel < channels:
                raise InvalidRequest(f"layer {target.layer!r} has channels 0..{channels - 1}, not {channel}",
                                     field="target.channels")


class _Objective:
    """What is maximized for each target: its class logit, or the mean activation of its channel."""

    def __init__(self, network: nn.Module, spec: ModelSpec, config: MaximizationConfig, device: torch.device) -> None:
        self.network = network
        self.layer = config.target.layer
        self.by_class = bool(config.target.classes)
        self.mean = torch.tensor(spec.mean, device=device)[None, :, None, None]
        self.std = torch.tensor(spec.std, device=device)[None, :, None, None]
        self.rows = torch.arange(config.count, device=device)
        self.targets = torch.tensor(config.target.classes or config.target.channels, device=device)

    def logits(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.network((rgb * 255.0 - self.mean) / self.std)

    def __call__(self, rgb: torch.Tensor) -> torch.Tensor:
        if self.by_class:
            return self.logits(rgb)[self.rows, self.targets]
        with capture(self.network, self.layer) as captured:
            self.logits(rgb)
        return captured.activation[self.rows, self.targets].mean(dim=(1, 2))

    def served(self, network: nn.Module, spec: ModelSpec, pixels: np.ndarray) -> list[float | None]:
        """p(class) of each picture as predict sees it: resized and centre-cropped to the model's
        input, as its PNG would be (unlike `final`'s, at `size` as it was optimized)."""
        if not self.by_class:
            return [None] * len(self.rows)
        batch, _ = imaging.preprocess([Image.fromarray(picture) for picture in pixels], spec)
        scores = network(torch.from_numpy(batch).to(self.rows.device))
        return torch.softmax(scores.float(), dim=1)[self.rows, self.targets].cpu().tolist()

    def final(self, rgb: torch.Tensor) -> tuple[torch.Tensor, list[float | None]]:
        """Each target's activation, and p(class) for class targets."""
        if not self.by_class:
            return self(rgb), [None] * len(self.rows)
        scores = self.logits(rgb)
        probabilities = torch.softmax(scores.float(), dim=1)[self.rows, self.targets]
        return scores[self.rows, self.targets], probabilities.cpu().tolist()


def _ascent_step(image: _Image, optimizer: torch.optim.Optimizer, objective: _Objective,
                 config: MaximizationConfig, generator: torch.Generator) -> torch.Tensor:
    """One jittered, regularized step; gradients reach the image only, so the network's
    parameters and their .grad stay as they were."""
    parameters = list(image.parameters())
    with torch.enable_grad():
        rgb = image()
        shift = torch.randint(-config.jitter, config.jitter + 1, (2,), generator=generator).tolist() \
            if config.jitter else [0, 0]
        reached = objective(torch.roll(rgb, shifts=shift, dims=(2, 3)))
        loss = (-reached + config.l2 * ((rgb - 0.5) ** 2).mean(dim=(1, 2, 3))
                + config.tv * total_variation(rgb)).sum()
        for parameter, gradient in zip(parameters, torch.autograd.grad(loss, parameters)):
            parameter.grad = gradient
        optimizer.step()
    return reached.detach()


def maximize(network: nn.Module, spec: ModelSpec, config: MaximizationConfig, progress: Progress,
             should_stop: ShouldStop, layer_channels: dict[str, int] | None = None) -> MaximizationResult:
    """`layer_channels` as `validate` takes it; found with a forward pass when not given."""
    validate(config, spec, layer_channels if layer_channels is not None
             else targetable_layers(network, spec.input_size))
    device = next(network.parameters()).device
    generator = torch.Generator().manual_seed(config.seed)
    image = _Image(config.count, config.size or spec.input_size, config.parameterization, generator).to(device)
    optimizer = torch.optim.Adam(image.parameters(), lr=config.lr)
    objective = _Objective(network, spec, config, device)
    history: list[list[float]] = []
    keep = kept_steps(config.steps)
    kept = set(keep)
    was_training = network.training
    network.eval()
    try:
        for step in range(config.steps):
            if should_stop():
                raise JobCancelled()
            reached = _ascent_step(image, optimizer, objective, config, generator)
            if config.blur_sigma > 0 and config.blur_every and (step + 1) % config.blur_every == 0:
                with torch.no_grad():
                    image.set_from(gaussian_blur(image(), config.blur_sigma))
            activation = [round(value, 4) for value in reached.cpu().tolist()]
            if step + 1 in kept:
                history.append(activation)
            progress((step + 1) / config.steps, step=step + 1, steps=config.steps, metrics={"activation": activation})
        with torch.no_grad():
            rgb = image()
            final, probabilities = objective.final(rgb)
            pixels = (rgb.permute(0, 2, 3, 1).cpu().numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
            served = objective.served(network, spec, pixels)
    finally:
        network.train(was_training)
    return MaximizationResult(pixels, final.cpu().tolist(), history, probabilities, keep, served)
