"""Which layers of a network can be explained or visualized."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.explain.base import capture


@dataclass(frozen=True)
class Run:
    """One module's part in a forward pass."""

    name: str
    calls: int
    shape: tuple[int, ...] | None  # of its (last) tensor output


def trace(net: nn.Module, input_size: int) -> dict[str, Run]:
    """Every named module's calls and output shape in one forward pass, in the order they ran."""
    runs: dict[str, list] = {}
    handles = []
    for name, module in net.named_modules():
        def record(module, inputs, output, name=name):
            entry = runs.setdefault(name, [0, None])
            entry[0] += 1
            entry[1] = tuple(output.shape) if isinstance(output, torch.Tensor) else None
        handles.append(module.register_forward_hook(record))
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(torch.zeros(1, 3, input_size, input_size, device=next(net.parameters()).device))
    finally:
        net.train(was_training)
        for handle in handles:
            handle.remove()
    return {name: Run(name, calls, shape) for name, (calls, shape) in runs.items()}


def targetable_maps(network: nn.Module, input_size: int) -> dict[str, tuple[int, int]]:
    """Named modules that run exactly once per forward and output a 4-D feature map of more than
    one position at `input_size`, in registration order, with the channels and the positions
    (height x width) of that map. A 1 x 1 map (a global pool's) has nowhere to point: every map of
    it is one value, drawn blank."""
    runs = trace(network, input_size)
    return {name: (runs[name].shape[1], runs[name].shape[2] * runs[name].shape[3])
            for name, _ in network.named_modules()
            if name and name in runs and runs[name].calls == 1 and runs[name].shape is not None
            and len(runs[name].shape) == 4 and runs[name].shape[2] * runs[name].shape[3] > 1}


def targetable_layers(network: nn.Module, input_size: int) -> dict[str, int]:
    """targetable_maps' layers with their channels."""
    return {name: channels for name, (channels, _) in targetable_maps(network, input_size).items()}


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
