"""SmoothGrad (Smilkov et al. 2017): gradients averaged over noisy copies of the input,
noise standard deviation = `noise` times the image's value range; seeded, so repeatable."""

from __future__ import annotations

import torch

from core.explain.base import InputMethod, check_range, forward_logits, input_gradients, resolve_targets

MAX_SAMPLES = 256


def smoothgrad_noise(inputs: torch.Tensor, samples: int, noise: float, seed: int) -> torch.Tensor:
    """(samples, *inputs.shape) Gaussian noise, scaled per image. Each image's noise is drawn
    from its own generator seeded with `seed`, so it does not depend on the batch around it."""
    generator = torch.Generator()
    spread = (inputs.flatten(1).max(dim=1).values - inputs.flatten(1).min(dim=1).values) * noise
    unit = torch.stack([torch.randn((samples, *inputs.shape[1:]), generator=generator.manual_seed(seed))
                        for _ in range(inputs.shape[0])], dim=1).to(inputs.device)
    return unit * spread[None, :, None, None, None]


class SmoothGrad(InputMethod):
    def attribute(self, model, inputs, targets, layer=None, samples: int = 25, noise: float = 0.15,
                  seed: int = 0, internal_batch_size: int = 16, **options):
        check_range("samples", samples, 1, MAX_SAMPLES)
        check_range("noise", noise, 0.0, 1.0)
        check_range("internal_batch_size", internal_batch_size, 1, 4096)
        logits = forward_logits(model, inputs)
        targets = resolve_targets(logits, targets)
        noisy = (inputs[None] + smoothgrad_noise(inputs, samples, noise, seed)).flatten(0, 1)
        repeated_targets = targets.repeat(samples)
        gradients = torch.cat([
            input_gradients(model, noisy[start:start + internal_batch_size],
                            repeated_targets[start:start + internal_batch_size])[0]
            for start in range(0, noisy.shape[0], internal_batch_size)])
        return gradients.view(samples, *inputs.shape).mean(dim=0), logits, targets
