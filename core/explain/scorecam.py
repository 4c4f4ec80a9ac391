"""Score-CAM (Wang et al. 2020): each channel, upsampled and scaled to [0, 1], masks the input;
the target logits of the masked inputs, softmaxed over channels, weight the channels."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from core.batching import pause_point
from core.explain.base import LayerMethod, check_range
from core.runtime.devices import images_per_pass


class ScoreCAM(LayerMethod):
    needs_gradients = False
    scores_masked_inputs = True

    def cost(self, options, input_size, layer_channels) -> int:
        return layer_channels + 2  # a masked input per channel, then the forward and backward of the layer

    def combine(self, model, inputs, activations, gradients, targets, batch_size: int | None = None,
                score: Callable[[torch.Tensor], torch.Tensor] | None = None, **options) -> torch.Tensor:
        """`score`: logits of a batch of masked inputs, by default `model` itself. Nothing here
        needs gradients, so on CPU the pipeline passes the model's ONNX Runtime session: Score-CAM
        at blocks.15 of EfficientNet-Lite0 is 2.0-2.7x faster that way (bench.explainers)."""
        if batch_size is None:
            batch_size = images_per_pass(inputs, 32)
        check_range("batch_size", batch_size, 1, 1024)
        score = score or model
        weights = torch.empty(activations.shape[:2], device=activations.device)
        with torch.no_grad():
            for image in range(inputs.shape[0]):
                for start in range(0, activations.shape[1], batch_size):
                    pause_point()
                    # masks for this slice of channels only: all of them at once would take
                    # channels x H x W floats per image (1280 x 224 x 224 = 257 MB)
                    masks = F.interpolate(activations[image, start:start + batch_size, None],
                                          size=inputs.shape[-2:], mode="bilinear", align_corners=True)
                    flat = masks.flatten(1)
                    low = flat.min(dim=1).values[:, None, None, None]
                    high = flat.max(dim=1).values[:, None, None, None]
                    masked = inputs[image][None] * ((masks - low) / (high - low + 1e-8))
                    weights[image, start:start + masked.shape[0]] = score(masked)[:, targets[image]]
        return (torch.softmax(weights, dim=1)[:, :, None, None] * activations).sum(dim=1)
