"""Guided backpropagation (Springenberg et al. 2015): through every ReLU, only positive
gradients flow back (on top of ReLU's own mask of positive inputs)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn

from core.explain.base import InputMethod, input_gradients

GUIDED_ACTIVATIONS = (nn.ReLU, nn.ReLU6)
# Those that gate rather than activate (SE and attention modules): guided backprop leaves them as
# they are, as captum does
_GATES = {"Sigmoid", "Hardsigmoid", "HardSigmoid", "Softmax", "Softmin", "LogSoftmax", "Tanh", "MultiheadAttention"}
_ACTIVATION_MODULES = ("torch.nn.modules.activation", "timm.layers.activations")


def guides(network: nn.Module) -> bool:
    """Whether guided backprop guides `network`: its activations are all ReLU or ReLU6 modules.
    Through SiLU, GELU or Hardswish ones it would be the plain input gradient, in part or in
    whole, under another name."""
    activations = [module for module in network.modules()
                   if type(module).__module__.startswith(_ACTIVATION_MODULES) and type(module).__name__ not in _GATES]
    return bool(activations) and all(isinstance(module, GUIDED_ACTIVATIONS) for module in activations)


@contextmanager
def guided_relus(model: nn.Module) -> Iterator[None]:
    def hook(module, inputs, output):
        if output.requires_grad:
            output.register_hook(lambda gradient: gradient.clamp(min=0))

    handles = [module.register_forward_hook(hook) for module in model.modules()
               if isinstance(module, GUIDED_ACTIVATIONS)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class GuidedBackprop(InputMethod):
    needs_guided_activations = True

    def attribute(self, model, inputs, targets, layer=None, **options):
        with guided_relus(model):
            return input_gradients(model, inputs, targets)
