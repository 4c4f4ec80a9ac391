"""Guided Grad-CAM (Selvaraju et al. 2017): guided backprop times the upsampled Grad-CAM map."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.explain.base import InputMethod
from core.explain.gradcam import GradCAM
from core.explain.guided_backprop import GuidedBackprop


class GuidedGradCAM(InputMethod):
    uses_layer = True
    needs_guided_activations = True

    def cost(self, options, input_size, layer_channels) -> int:
        return 4  # Grad-CAM and guided backpropagation

    def attribute(self, model, inputs, targets, layer=None, **options):
        cam = GradCAM()(model, inputs, targets, layer)
        guided, logits, targets = GuidedBackprop().attribute(model, inputs, cam.targets)
        maps = torch.from_numpy(cam.maps).to(inputs.device)[:, None]
        upsampled = F.interpolate(maps, size=inputs.shape[-2:], mode="bilinear", align_corners=False)
        return guided * upsampled, logits, targets
