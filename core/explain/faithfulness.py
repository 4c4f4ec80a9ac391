"""Deletion and insertion (Petsiuk et al. 2018, RISE): does the map rank the pixels the model
relies on first?

Deletion blacks out the pixels in the map's order, a `1/steps` slice at a time, and follows the
target class's probability: the faster it falls, the better (lower area under the curve).
Insertion puts the pixels back, in the same order, into a blurred copy of the image: the faster
the probability rises, the better (higher area). Each image costs 2 x (steps + 1) forward passes,
run as one batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from core.explain.baselines import make_baseline

DEFAULT_STEPS = 16


@dataclass(frozen=True)
class Faithfulness:
    deletion: float    # area under p(target) as pixels are removed; lower is better
    insertion: float   # area under p(target) as pixels are restored; higher is better
    steps: int


def pixel_order(saliency: np.ndarray, size: int) -> torch.Tensor:
    """Input pixel indices (row-major) from most to least important, the map bilinearly
    upsampled to size x size; ties keep raster order."""
    upsampled = F.interpolate(torch.as_tensor(saliency, dtype=torch.float32)[None, None], size=(size, size),
                              mode="bilinear", align_corners=False)
    return torch.argsort(-upsampled.flatten(), stable=True)


def deletion_and_insertion(score: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor,
                           saliency: np.ndarray, target: int, mean: tuple[float, ...], std: tuple[float, ...],
                           steps: int = DEFAULT_STEPS) -> Faithfulness:
    """`image`: one normalized (3, S, S) input; `score`: logits of a batch of such inputs."""
    size = image.shape[-1]
    order = pixel_order(saliency, size).to(image.device)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=image.device)
    shown = torch.tensor([round(k * order.numel() / steps) for k in range(steps + 1)], device=image.device)
    first_k = (rank[None] < shown[:, None]).view(steps + 1, 1, size, size)  # the top pixels at each step
    black = make_baseline("black", image[None], mean, std)
    blurred = make_baseline("blur", image[None], mean, std)
    deleted = torch.where(first_k, black, image[None])
    inserted = torch.where(first_k, image[None], blurred)
    with torch.no_grad():
        probabilities = torch.softmax(score(torch.cat([deleted, inserted])).float(), dim=1)[:, target]
    curves = probabilities.view(2, steps + 1).cpu().numpy()
    areas = (curves[:, :-1] + curves[:, 1:]).sum(axis=1) / (2 * steps)  # trapezoids over [0, 1]
    return Faithfulness(float(areas[0]), float(areas[1]), steps)
