"""Which layers of a network can be explained or visualized."""

from __future__ import annotations

import torch
from torch import nn


def targetable_layers(network: nn.Module, input_size: int) -> dict[str, int]:
    """Named modules that run exactly once per forward and output a 4-D feature map, in
    registration order, with the channels of that map."""
    calls: dict[str, int] = {}
    channels: dict[str, int] = {}
    handles = []
    for name, module in network.named_modules():
        if not name:
            continue

        def record(module, inputs, output, name=name):
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                channels[name] = output.shape[1]

        handles.append(module.register_forward_hook(record))
    try:
        device = next(network.parameters()).device
        with torch.no_grad():
            network(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return {name: channels[name] for name, _ in network.named_modules() if calls.get(name) == 1 and name in channels}
