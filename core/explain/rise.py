"""RISE (Petsiuk et al. 2018): random masks keep parts of the image and black out the rest; the
map is the average of the masks weighted by the target's probability on each masked image,
sum_i p_i M_i / (N p). Needs only logits: model-agnostic."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from core.explain.base import PerturbationMethod
from core.params import param

BATCH = 128  # masked inputs per `score` call


@dataclass(frozen=True)
class RiseOptions:
    masks: int = param(1000, ge=1, le=8000, doc="random masks averaged")
    seed: int = param(0, ge=0, le=2**32 - 1, doc="seed of the masks: the same seed gives the same map")
    cells: int = param(7, ge=2, le=32, doc="each mask is a random cells x cells grid, smoothly upsampled")
    p: float = param(0.5, gt=0, le=1, doc="probability that a grid cell keeps the image")


def rise_masks(count: int, cells: int, p: float, height: int, width: int, seed: int,
               chunk: int = BATCH) -> Iterator[torch.Tensor]:
    """The masks in chunks of (at most `chunk`, height, width) floats in [0, 1]. Mask i draws, in
    order from one generator seeded with `seed`: its grid (`torch.rand(cells, cells) < p`), then
    its shift down and its shift right (each `torch.randint(cell side, ())`). The grid is
    upsampled bilinearly to (cells + 1) cell sides and cropped at the shift, so cell borders fall
    anywhere. The masks do not depend on `chunk`."""
    generator = torch.Generator().manual_seed(seed)
    cell_h, cell_w = math.ceil(height / cells), math.ceil(width / cells)
    for start in range(0, count, chunk):
        grids, shifts = [], []
        for _ in range(min(chunk, count - start)):
            grids.append(torch.rand((cells, cells), generator=generator) < p)
            shifts.append((int(torch.randint(cell_h, (), generator=generator)),
                           int(torch.randint(cell_w, (), generator=generator))))
        upsampled = F.interpolate(torch.stack(grids)[:, None].float(), mode="bilinear", align_corners=False,
                                  size=((cells + 1) * cell_h, (cells + 1) * cell_w))[:, 0]
        yield torch.stack([mask[down:down + height, right:right + width]
                           for mask, (down, right) in zip(upsampled, shifts)])


class Rise(PerturbationMethod):
    Options = RiseOptions

    def cost(self, options, input_size, layer_channels) -> int:
        return options["masks"] + 1

    def perturb(self, score, image, baseline, target, probability, masks: int = Options.masks,
                seed: int = Options.seed, cells: int = Options.cells, p: float = Options.p) -> torch.Tensor:
        height, width = image.shape[-2:]
        saliency = torch.zeros(height * width, dtype=torch.float64, device=image.device)
        for chunk in rise_masks(masks, cells, p, height, width, seed):
            kept = chunk.to(image)[:, None]
            masked = image * kept + baseline * (1 - kept)
            probabilities = torch.softmax(score(masked), dim=1)[:, target]
            saliency += probabilities.double() @ chunk.to(saliency).flatten(1)
        return (saliency / (masks * p)).view(height, width)
