"""Guided backpropagation (Springenberg et al. 2015): through every ReLU, only positive
gradients flow back (on top of ReLU's own mask of positive inputs)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn

from core.explain.base import InputMethod, input_gradients

GUIDED_ACTIVATIONS = (nn.ReLU, nn.ReLU6)


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
    def attribute(self, model, inputs, targets, layer=None, **options):
        with guided_relus(model):
            return input_gradients(model, inputs, targets)
