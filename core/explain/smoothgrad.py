"""SmoothGrad (Smilkov et al. 2017): gradients averaged over noisy copies of the input,
noise standard deviation = `noise` times the image's value range; seeded, so repeatable."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator

import torch

from core.batching import pause_point
from core.explain.base import InputMethod, check_range, forward_logits, input_gradients, resolve_targets
from core.params import param
from core.runtime.devices import images_per_pass


@dataclass(frozen=True)
class SmoothGradOptions:
    samples: int = param(25, ge=1, le=256, doc="noisy copies averaged")
    noise: float = param(0.15, ge=0, le=1, doc="noise standard deviation as a fraction of the image's value range")


def noise_draws(inputs: torch.Tensor, samples: int, noise: float, seed: int) -> Iterator[tuple[int, torch.Tensor]]:
    """(image index, Gaussian noise like one image) for every sample of every image, samples
    outermost, one at a time so memory stays flat. The standard deviation is `noise` times the
    image's value range; each image draws from its own generator seeded with `seed`, so its
    noise does not depend on the batch around it."""
    spread = ((inputs.flatten(1).max(dim=1).values - inputs.flatten(1).min(dim=1).values) * noise).cpu()
    generators = [torch.Generator().manual_seed(seed) for _ in range(inputs.shape[0])]
    for _ in range(samples):
        for image, generator in enumerate(generators):
            draw = torch.randn(inputs.shape[1:], generator=generator, dtype=inputs.dtype)
            yield image, draw * spread[image]  # on the CPU: a batch goes to the device at once


def smoothgrad_noise(inputs: torch.Tensor, samples: int, noise: float, seed: int) -> torch.Tensor:
    """All of SmoothGrad's noise at once, (samples, *inputs.shape): for references and tests."""
    draws = [draw for _, draw in noise_draws(inputs, samples, noise, seed)]
    return torch.stack(draws).view(samples, *inputs.shape).to(inputs.device)


class SmoothGrad(InputMethod):
    Options = SmoothGradOptions

    def cost(self, options, input_size, layer_channels) -> int:
        return 2 * options["samples"]

    def attribute(self, model, inputs, targets, layer=None, samples: int = Options.samples,
                  noise: float = Options.noise, seed: int = 0, internal_batch_size: int | None = None, **options):
        self.checked(samples=samples, noise=noise)
        if internal_batch_size is None:
            internal_batch_size = images_per_pass(inputs, 16)
        check_range("internal_batch_size", internal_batch_size, 1, 4096)
        logits = forward_logits(model, inputs)
        targets = resolve_targets(logits, targets)
        summed = torch.zeros_like(inputs)
        draws = noise_draws(inputs, samples, noise, seed)
        while batch := list(itertools.islice(draws, internal_batch_size)):
            pause_point()
            images = torch.tensor([image for image, _ in batch], device=inputs.device)
            noisy = inputs[images] + torch.stack([draw for _, draw in batch]).to(inputs.device)
            gradients, _, _ = input_gradients(model, noisy, targets[images])
            summed.index_add_(0, images, gradients)
        return summed / samples, logits, targets
