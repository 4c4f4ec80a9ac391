"""CAM (Zhou et al. 2016): the classifier's weights for the target class applied to the last
feature map. No backward pass; valid only at the layer that feeds global pooling + classifier."""

from __future__ import annotations

import torch
from torch import nn

from core.explain.base import LayerMethod


def class_activation_maps(features: torch.Tensor, classifier_weight: torch.Tensor,
                          targets: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bc,bchw->bhw", classifier_weight[targets], features)


class CAM(LayerMethod):
    needs_gradients = False
    default_layer_only = True
    needs_linear_head = True

    def combine(self, model: nn.Module, inputs, activations, gradients, targets, **options) -> torch.Tensor:
        return class_activation_maps(activations, model.classifier.weight.detach(), targets)
