"""CAM (Zhou et al. 2016): the classifier's weights for the target class applied to the last
feature map. No backward pass; valid only at the layer that feeds global pooling + classifier.

The feature map and the logits may come from any forward pass that yields both: by default a
torch forward with the layer captured; the service passes its ONNX Runtime session, whose graph
outputs the same feature map, so the CAM comes from the forward that made the prediction.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from core.explain.base import Explanation, LayerMethod, Method, capture, normalize_maps, resolve_targets

# inputs -> (logits, the feature map that global pooling sees)
FeatureSource = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def class_activation_maps(features: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """`weight`: the linear classifier's (classes x channels)."""
    weights = weight[targets]
    if features.device.type == "cpu":
        # numpy on one thread: torch's threads, woken after an ONNX Runtime run, took 1.8 ms for it, numpy 0.24
        return torch.from_numpy(np.einsum("bc,bchw->bhw", weights.detach().numpy(), features.detach().numpy()))
    return torch.einsum("bc,bchw->bhw", weights, features)


# parameter -> (what it was when copied, the copy): see classifier_weight
_weight_copies: WeakIdKeyDictionary = WeakIdKeyDictionary()


def classifier_weight(model: nn.Module, classifier: str, device: torch.device) -> torch.Tensor:
    """The classifier's weight, float32 on `device`: the parameter itself where it already is
    that, else a copy kept until the parameter changes. On a GPU model whose feature map comes
    from ONNX Runtime on the CPU, each CAM would otherwise copy the weight back (5 MB for Lite0)."""
    parameter = model.get_submodule(classifier).weight
    if parameter.device == device and parameter.dtype == torch.float32:
        return parameter.detach()
    # torch's in-place counter catches an optimizer step; storage and dtype catch `.data = ...`
    # and `module.to(dtype)`, which leave the counter as it was
    state = (parameter._version, parameter.data_ptr(), parameter.dtype, device)
    seen, copied = _weight_copies.get(parameter, (None, None))
    if seen != state:
        copied = parameter.detach().to(device, torch.float32)
        _weight_copies[parameter] = (state, copied)
    return copied


def torch_features(model: nn.Module, layer: str) -> FeatureSource:
    def forward(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with capture(model, layer) as captured, torch.no_grad():
            logits = model(inputs)
        return logits, captured.activation
    return forward


class CAM(Method):
    uses_layer = True
    map_at_layer = True
    default_layer_only = True
    needs_linear_head = True
    takes_feature_source = True

    def cost(self, options, input_size, layer_channels) -> int:
        return 1

    def __call__(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor | None, layer: str,
                 classifier: str, features: FeatureSource | None = None, **options: object) -> Explanation:
        """`classifier`: the name of the model's final linear layer (ModelSpec.classifier_layer);
        `features`: where the logits and the feature map at `layer` come from (default torch)."""
        logits, activations = (features or torch_features(model, layer))(inputs)
        targets = resolve_targets(logits, targets)
        weight = classifier_weight(model, classifier, activations.device)
        maps = class_activation_maps(activations.float(), weight, targets.to(activations.device))
        return Explanation(normalize_maps(torch.relu(maps)), logits.detach(), targets)


def at_classifier_layer(method: LayerMethod, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor | None,
                        classifier: str, features: FeatureSource) -> Explanation:
    """A gradient CAM method (`from_activations_and_gradients`) at the layer that feeds global
    average pooling and a linear classifier, with no backward pass: there the target logit's
    gradient is, at every position, the class's classifier weights over the map's area (so
    Grad-CAM's channel weights are CAM's over a constant, and its map is CAM's). The feature map
    comes from `features` (the service's ONNX Runtime forward)."""
    logits, activations = features(inputs)
    targets = resolve_targets(logits, targets)
    activations = activations.float()
    weight = classifier_weight(model, classifier, activations.device)
    batch, channels, height, width = activations.shape
    gradients = (weight[targets.to(activations.device)] / (height * width))[:, :, None, None]
    maps = method.combine(model, inputs, activations, gradients.expand(batch, channels, height, width), targets)
    return Explanation(normalize_maps(torch.relu(maps)), logits.detach(), targets)
