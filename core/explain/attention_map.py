"""The learned spatial attention map: the multiplier of a spatial attention module's gate.

The raw gate goes out with every map (`Explanation.gates`: min, max, mean per image): a map is
min-max scaled like every other method's, so without them a nearly uniform gate would look as
contrasted as a sharp one. A gate whose values span less than FLAT_GATE_RANGE over the image
(in gate units: a multiplier; the residual gate is 1 where it changes nothing) is `flat`, and
its map is all zeros instead of stretched noise.
"""

from __future__ import annotations

import torch

from core.explain.base import Explanation, GateRange, LayerMethod, capture, normalize_maps, resolve_targets
from core.names import FLAT_GATE_RANGE


def gate_ranges(gates: torch.Tensor) -> list[GateRange]:
    """(batch, h, w) raw gates -> each image's range."""
    flat = gates.flatten(1).float()
    low, high, mean = flat.min(dim=1).values, flat.max(dim=1).values, flat.mean(dim=1)
    return [GateRange(round(float(lo), 6), round(float(hi), 6), round(float(mu), 6), float(hi - lo) < FLAT_GATE_RANGE)
            for lo, hi, mu in zip(low, high, mean)]


class AttentionMap(LayerMethod):
    needs_gradients = False
    needs_spatial_attention = True

    def cost(self, options, input_size, layer_channels) -> int:
        return 1

    def __call__(self, model, inputs, targets, layer, **options) -> Explanation:
        with capture(model, layer) as captured, torch.no_grad():
            logits = model(inputs)
        gates = captured.activation[:, 0].detach()
        ranges = gate_ranges(gates)
        maps = normalize_maps(gates)
        for index, gate in enumerate(ranges):
            if gate.flat:
                maps[index] = 0.0
        return Explanation(maps, logits.detach(), resolve_targets(logits, targets), ranges)
