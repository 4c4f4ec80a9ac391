"""What CAM, fine-tuning, attention and ONNX export need to know about a network, and nothing
else: every network Gazer builds carries one as `network.anatomy`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Anatomy:
    cam_layer: str                          # the feature map that global pooling sees
    classifier_layer: str                   # the final linear layer
    head_layers: tuple[str, ...]            # what fine-tuning makes new: classifier, hidden layer, attention
    blocks: tuple[str, ...]                 # the backbone's blocks, bottom first
    stages: tuple[tuple[str, ...], ...]     # blocks grouped, top stage first (for freezing and unfreezing)
