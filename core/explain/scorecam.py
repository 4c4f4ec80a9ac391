"""Score-CAM (Wang et al. 2020): each channel, upsampled and scaled to [0, 1], masks the input;
the target logits of the masked inputs, softmaxed over channels, weight the channels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.explain.base import LayerMethod, check_range


class ScoreCAM(LayerMethod):
    needs_gradients = False

    def combine(self, model, inputs, activations, gradients, targets, batch_size: int = 32,
                **options) -> torch.Tensor:
        check_range("batch_size", batch_size, 1, 1024)
        upsampled = F.interpolate(activations, size=inputs.shape[-2:], mode="bilinear", align_corners=True)
        flat = upsampled.flatten(2)
        low, high = flat.min(dim=2).values[..., None, None], flat.max(dim=2).values[..., None, None]
        masks = (upsampled - low) / (high - low + 1e-8)
        weights = torch.empty(activations.shape[:2], device=activations.device)
        with torch.no_grad():
            for image in range(inputs.shape[0]):
                for start in range(0, masks.shape[1], batch_size):
                    masked = inputs[image][None] * masks[image, start:start + batch_size, None]
                    weights[image, start:start + masked.shape[0]] = model(masked)[:, targets[image]]
        return (torch.softmax(weights, dim=1)[:, :, None, None] * activations).sum(dim=1)
