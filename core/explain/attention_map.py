"""The learned spatial attention map (the sigmoid gate of a spatial attention module)."""

from __future__ import annotations

from core.explain.base import LayerMethod


class AttentionMap(LayerMethod):
    needs_gradients = False
    needs_spatial_attention = True

    def cost(self, options, input_size, layer_channels) -> int:
        return 1

    def combine(self, model, inputs, activations, gradients, targets, **options):
        return activations[:, 0]
