"""Baselines in a model's input space (black, blurred, uniform noise) and the Gaussian blur behind
them, shared by integrated gradients, the faithfulness scores and activation maximization."""

from __future__ import annotations

from typing import Literal, get_args

import torch

from core.errors import InvalidRequest

Baseline = Literal["black", "blur", "uniform"]
BASELINES: tuple[str, ...] = get_args(Baseline)


def make_baseline(kind: str, inputs: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...],
                  seed: int = 0) -> torch.Tensor:
    """A baseline in the model's input space: black pixels, a heavy blur of the image, or
    uniform random pixels (seeded)."""
    mean_t = torch.tensor(mean, device=inputs.device)[None, :, None, None]
    std_t = torch.tensor(std, device=inputs.device)[None, :, None, None]
    if kind == "black":
        return ((0.0 - mean_t) / std_t).expand_as(inputs).contiguous()
    if kind == "uniform":
        generator = torch.Generator()  # re-seeded per image: independent of the rest of the batch
        pixels = torch.stack([torch.rand(inputs.shape[1:], generator=generator.manual_seed(seed))
                              for _ in range(inputs.shape[0])]).to(inputs.device) * 255.0
        return (pixels - mean_t) / std_t
    if kind == "blur":
        return gaussian_blur(inputs, sigma=inputs.shape[-1] / 16)
    raise InvalidRequest(f"unknown baseline {kind!r}; valid: {', '.join(BASELINES)}", field="baseline")


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    horizontal = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    padded = torch.nn.functional.pad(images, (radius, radius, 0, 0), mode="replicate")
    blurred = torch.nn.functional.conv2d(padded, horizontal, groups=channels)
    padded = torch.nn.functional.pad(blurred, (0, 0, radius, radius), mode="replicate")
    return torch.nn.functional.conv2d(padded, vertical, groups=channels)
