"""Gradient saliency (Simonyan et al. 2014): |d score / d pixel|, max over colour channels."""

from __future__ import annotations

from core.explain.base import InputMethod, input_gradients


class Saliency(InputMethod):
    def attribute(self, model, inputs, targets, layer=None, **options):
        return input_gradients(model, inputs, targets)
