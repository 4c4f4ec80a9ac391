"""What CAM, fine-tuning, attention and ONNX export need to know about a network, and nothing
else: every network Gazer builds carries one as `network.anatomy`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable

from torch import nn


@dataclass(frozen=True)
class Anatomy:
    cam_layer: str                          # the feature map that global pooling sees
    classifier_layer: str                   # the final linear layer
    head_layers: tuple[str, ...]            # what trains in every strategy: classifier, hidden layer, attention
    blocks: tuple[str, ...]                 # the backbone's blocks, bottom first
    stages: tuple[tuple[str, ...], ...]     # blocks grouped, top stage first (for freezing and unfreezing)


def first_with_parameters(modules: list[nn.Module], nth_last: int | None = None) -> int:
    """The index of the first of `modules` that has parameters (with `nth_last`: of the nth last
    of those; the first module when fewer hold any), moved back over the dropouts right before
    it, which go with the layer they feed (AlexNet's classifier.0). len(modules) when none has any."""
    holding = [index for index, module in enumerate(modules) if any(True for _ in module.parameters())]
    if not holding:
        return len(modules)
    start = holding[0] if nth_last is None else holding[-nth_last] if len(holding) >= nth_last else 0
    while start > 0 and isinstance(modules[start - 1], nn.Dropout):
        start -= 1
    return start


def stages_by_resolution(blocks: list[tuple[str, Hashable]]) -> list[tuple[str, ...]]:
    """Blocks (name, output resolution), bottom first, grouped into runs of one resolution: the top
    stage first, each stage's last block first."""
    stages: list[list[str]] = []
    previous = None
    for name, resolution in reversed(blocks):
        if not stages or resolution != previous:
            stages.append([])
            previous = resolution
        stages[-1].append(name)
    return [tuple(stage) for stage in stages]
