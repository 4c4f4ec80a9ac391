"""Which layers of a network can be explained or visualized."""

from __future__ import annotations

import torch
from torch import nn

from core.explain.base import capture


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


def feeds_a_linear_head(network: nn.Module, cam_layer: str, classifier_layer: str, input_size: int) -> bool:
    """Whether the logits are the classifier applied to the global average of `cam_layer`'s
    feature map (what CAM needs), checked on one random input."""
    classifier = network.get_submodule(classifier_layer)
    if not isinstance(classifier, nn.Linear):
        return False
    device = next(network.parameters()).device
    example = torch.rand(1, 3, input_size, input_size, generator=torch.Generator().manual_seed(0)).to(device)
    was_training = network.training
    network.eval()
    try:
        with capture(network, cam_layer) as captured, torch.no_grad():
            logits = network(example)
    finally:
        network.train(was_training)
    features = captured.activation
    if features.dim() != 4 or features.shape[1] != classifier.in_features or not torch.isfinite(logits).all():
        return False
    with torch.no_grad():
        expected = classifier(features.mean(dim=(2, 3)))
    return bool(torch.allclose(logits, expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max()) + 1e-6))
