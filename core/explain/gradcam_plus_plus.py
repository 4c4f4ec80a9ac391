"""Grad-CAM++ (Chattopadhyay et al. 2018), eq. 19: higher-order weights for each location."""

from __future__ import annotations

import torch

from core.explain.base import LayerMethod


class GradCAMPlusPlus(LayerMethod):
    from_activations_and_gradients = True

    def weigh(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        squared = gradients.pow(2)
        cubed = squared * gradients
        activation_sums = activations.sum(dim=(2, 3), keepdim=True)
        alphas = squared / (2 * squared + activation_sums * cubed + 1e-6)
        alphas = torch.where(gradients != 0, alphas, torch.zeros_like(alphas))
        return (torch.relu(gradients) * alphas).sum(dim=(2, 3))
