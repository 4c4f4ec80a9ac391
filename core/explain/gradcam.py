"""Grad-CAM (Selvaraju et al. 2017): channels weighted by their spatially averaged gradient."""

from __future__ import annotations

import torch

from core.explain.base import LayerMethod


class GradCAM(LayerMethod):
    from_activations_and_gradients = True

    def weigh(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return gradients.mean(dim=(2, 3))
