"""Occlusion (Zeiler & Fergus 2014; captum's Occlusion): a window of the black baseline slides
over the image; a pixel's map value is the mean, over the windows covering it, of the drop in the
target's probability when that window is occluded, where it drops (a rise is shown as 0, no
effect). Needs only logits: model-agnostic."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.errors import InvalidRequest
from core.explain.base import PerturbationMethod
from core.params import param

BATCH = 64  # occluded inputs per `score` call
MAX_POSITIONS = 4096  # window positions per image: a bounded cost (window 4, stride 1 at 224 is 48,841)


@dataclass(frozen=True)
class OcclusionOptions:
    window: int = param(32, ge=4, le=224, doc="side of the occluding square, in input pixels "
                                              "(at most the whole input)")
    stride: int = param(16, ge=1, le=224, doc="step between window positions, in input pixels; the windows "
                                              "must cover every pixel (a stride over the window that leaves a gap "
                                              "is refused)")


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Offsets of the windows along one side; the last one ends at the border. A stride over the
    window leaves pixels between windows that none covers: an InvalidRequest (their map would be 0 / 0)."""
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    if any(later - earlier > window for earlier, later in zip(starts, starts[1:])):
        raise InvalidRequest(f"stride {stride} is larger than window {window}: the pixels between windows would "
                             f"be covered by none; use a stride of at most {window}", field="stride")
    return starts


def window_positions(height: int, width: int, window: int, stride: int) -> list[tuple[int, int]]:
    """(top, left) of each window over an image, covering every pixel; more than MAX_POSITIONS, or
    pixels left uncovered, is an InvalidRequest. `cost` asks first, so that a request refused here
    is refused before anything runs or is charged."""
    starts = (window_starts(height, min(window, height), stride), window_starts(width, min(window, width), stride))
    if len(starts[0]) * len(starts[1]) > MAX_POSITIONS:
        raise InvalidRequest(f"window {window} with stride {stride} needs {len(starts[0]) * len(starts[1])} occluded "
                             f"inputs per image at {width}x{height}; the limit is {MAX_POSITIONS}: use a larger "
                             f"stride", field="stride")
    return [(top, left) for top in starts[0] for left in starts[1]]


class Occlusion(PerturbationMethod):
    Options = OcclusionOptions
    evidence_only = True

    def cost(self, options, input_size, layer_channels) -> int:
        return len(window_positions(input_size, input_size, options["window"], options["stride"])) + 1

    def perturb(self, score, image, baseline, target, probability, window: int = Options.window,
                stride: int = Options.stride) -> torch.Tensor:
        height, width = image.shape[-2:]
        window_h, window_w = min(window, height), min(window, width)
        positions = window_positions(height, width, window, stride)
        drops = torch.zeros((height, width), dtype=torch.float64, device=image.device)
        covered = torch.zeros_like(drops)
        for start in range(0, len(positions), BATCH):
            chunk = positions[start:start + BATCH]
            occluded = image.repeat(len(chunk), 1, 1, 1)
            for index, (top, left) in enumerate(chunk):
                window_of = (slice(None), slice(top, top + window_h), slice(left, left + window_w))
                occluded[index][window_of] = baseline[window_of]
            occluded_probabilities = torch.softmax(score(occluded), dim=1)[:, target].tolist()
            for (top, left), occluded_probability in zip(chunk, occluded_probabilities):
                drops[top:top + window_h, left:left + window_w] += probability - occluded_probability
                covered[top:top + window_h, left:left + window_w] += 1
        return drops / covered
