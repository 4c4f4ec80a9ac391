"""Integrated gradients (Sundararajan et al. 2017): (x - baseline) times the path integral of
gradients from the baseline to x, by Gauss-Legendre quadrature (captum's default), with the
path points of all images run through the model in batches."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from core.batching import pause_point
from core.explain.base import InputMethod, check_range, forward_logits, input_gradients, resolve_targets
from core.explain.baselines import Baseline, make_baseline
from core.params import param
from core.runtime.devices import images_per_pass


@dataclass(frozen=True)
class IntegratedGradientsOptions:
    steps: int = param(50, ge=1, le=512, doc="path steps (Gauss-Legendre nodes), run in batches")
    baseline: Baseline = param("black", doc="the path's start: black, blur (a heavy blur of the image) or "
                                            "uniform (seeded noise)")


def quadrature(steps: int) -> tuple[np.ndarray, np.ndarray]:
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return 0.5 * (nodes + 1.0), 0.5 * weights


class IntegratedGradients(InputMethod):
    Options = IntegratedGradientsOptions

    def cost(self, options, input_size, layer_channels) -> int:
        return 2 * options["steps"]

    def attribute(self, model, inputs, targets, layer=None, steps: int = Options.steps,
                  baseline: str | torch.Tensor = Options.baseline, internal_batch_size: int | None = None,
                  input_mean: tuple[float, ...] = (0.0, 0.0, 0.0),
                  input_std: tuple[float, ...] = (1.0, 1.0, 1.0), seed: int = 0, **options):
        """`baseline` is a tensor like `inputs` or one of BASELINES, built in pixel space with
        the model's `input_mean` / `input_std` (pixels 0..255)."""
        self.checked(steps=steps, **({"baseline": baseline} if isinstance(baseline, str) else {}))
        if internal_batch_size is None:
            internal_batch_size = images_per_pass(inputs, 16)
        check_range("internal_batch_size", internal_batch_size, 1, 4096)
        if isinstance(baseline, str):
            baseline = make_baseline(baseline, inputs, input_mean, input_std, seed)
        logits = forward_logits(model, inputs)
        targets = resolve_targets(logits, targets)
        baseline = baseline.to(inputs.device)
        alphas, step_sizes = quadrature(steps)
        alphas = torch.tensor(alphas, dtype=inputs.dtype, device=inputs.device)
        step_sizes = torch.tensor(step_sizes, dtype=inputs.dtype, device=inputs.device)
        image_index = torch.arange(inputs.shape[0], device=inputs.device).repeat_interleave(steps)
        step_index = torch.arange(steps, device=inputs.device).repeat(inputs.shape[0])
        delta = inputs - baseline
        summed = torch.zeros_like(inputs)
        for start in range(0, image_index.numel(), internal_batch_size):
            pause_point()
            images = image_index[start:start + internal_batch_size]
            points = step_index[start:start + internal_batch_size]
            path = baseline[images] + alphas[points, None, None, None] * delta[images]
            gradients, _, _ = input_gradients(model, path, targets[images])
            summed.index_add_(0, images, gradients * step_sizes[points, None, None, None])
        return delta * summed, logits, targets

    @staticmethod
    def reduce(attributions: torch.Tensor) -> torch.Tensor:
        return attributions.sum(dim=1).abs()
