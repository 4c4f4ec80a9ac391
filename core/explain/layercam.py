"""LayerCAM (Jiang et al. 2021): each location weighted by its own positive gradient."""

from __future__ import annotations

import torch

from core.explain.base import LayerMethod


class LayerCAM(LayerMethod):
    from_activations_and_gradients = True

    def combine(self, model, inputs, activations, gradients, targets, **options) -> torch.Tensor:
        return (torch.relu(gradients) * activations).sum(dim=1)
