"""Any torchvision classification builder, or any timm model, with the surface Gazer needs.

What differs per architecture is read from the network itself, once, by one forward pass:
- the classifier: timm's `get_classifier()`, else the last `nn.Linear` (torchvision's `fc`,
  `classifier[-1]`, ...);
- the CAM layer: the last top-level child whose output is a feature map wider than 1x1 and
  is not a pooling layer (`layer4`, `features`, `Mixed_7c`, timm's `bn2`, ...);
- the blocks: the top-level children up to the CAM layer, containers opened one level
  (`features.0`, `layer4.1`, timm's `blocks.6`), in the order they run;
- the stages: runs of blocks with the same output resolution;
- the neck: pretrained layers between the CAM layer and the classifier, if any (VGG's first
  linear layers), the top stage and the last blocks.
Attention modules go after the last block of the top stages, applied by forward hooks, so the
original network's module names (and its state-dict keys) stay as they were: an uploaded
state dict loads as it is, and layers are named as the user knows them (`layer4`, `fc`).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator

import torch
from torch import nn

from core.attention import choose_points, make_attention
from core.errors import InvalidRequest
from core.models.anatomy import Anatomy, first_with_parameters, stages_by_resolution
from core.models.layers import Run, trace

TIMM_PREFIX = "timm:"
_POOLING = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d)


def torchvision_architectures() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def construct(architecture: str) -> nn.Module:
    """The architecture with random weights and its default classifier; nothing is downloaded."""
    if architecture.startswith(TIMM_PREFIX):
        import timm

        return timm.create_model(architecture[len(TIMM_PREFIX):], pretrained=False)
    import torchvision

    options = {"aux_logits": False, "init_weights": False} if architecture in ("inception_v3", "googlenet") else {}
    return torchvision.models.get_model(architecture, weights=None, **options)


def construct_on_meta(architecture: str) -> nn.Module:
    """The architecture on the meta device: its names and shapes, nothing allocated."""
    with on_meta(architecture):
        return construct(architecture)


@contextmanager
def on_meta(architecture: str) -> Iterator[None]:
    """Networks of `architecture` are built on the meta device meanwhile (RegNet's too)."""
    with _regnet_widths_on_the_cpu() if architecture.startswith("regnet_") else nullcontext(), torch.device("meta"):
        yield


_REGNET_PATCH = threading.Lock()


@contextmanager
def _regnet_widths_on_the_cpu() -> Iterator[None]:
    """RegNet's builders compute their block widths with tensors and read them back, which the
    meta device cannot do: that arithmetic (a few numbers) runs on the CPU while this is held.
    Another thread building a RegNet meanwhile computes its widths on the CPU too, as it would."""
    from torchvision.models import regnet

    with _REGNET_PATCH:
        original = regnet.BlockParams.__dict__["from_init_params"]

        def on_the_cpu(cls: type, *args: Any, **kwargs: Any) -> Any:
            with torch.device("cpu"):
                return original.__func__(cls, *args, **kwargs)

        regnet.BlockParams.from_init_params = classmethod(on_the_cpu)
        try:
            yield
        finally:
            regnet.BlockParams.from_init_params = original


def classifier_name(net: nn.Module) -> str:
    """The final linear layer's name: timm's `get_classifier()`, else the last `nn.Linear`."""
    if hasattr(net, "get_classifier"):  # timm
        found = net.get_classifier()
        names = [name for name, module in net.named_modules() if module is found and isinstance(module, nn.Linear)]
    else:
        names = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise InvalidRequest(f"{type(net).__name__} has no linear classifier to read the classes from",
                             field="architecture")
    return names[-1]


def _is_feature_map(run: Run | None) -> bool:
    return run is not None and run.calls == 1 and run.shape is not None and len(run.shape) == 4 \
        and run.shape[2] * run.shape[3] > 1


def _cam_layer(net: nn.Module, runs: dict[str, Run], input_size: int) -> str:
    children = [(name, module) for name, module in net.named_children()
                if _is_feature_map(runs.get(name)) and not isinstance(module, _POOLING)]
    shrunk = [name for name, module in net.named_children() if not isinstance(module, _POOLING)
              and (run := runs.get(name)) is not None and run.shape is not None and len(run.shape) == 4]
    if not children and shrunk:
        raise InvalidRequest(f"at input_size {input_size} {type(net).__name__}'s feature maps shrink to 1 x 1 "
                             f"({shrunk[-1]!r}): a map of one position has nowhere to point; give a larger "
                             f"input_size", field="input_size")
    if not children:
        raise InvalidRequest(f"{type(net).__name__} has no top-level layer that outputs a feature map, as a "
                             f"convolutional network's last stage does: vision transformers and other networks "
                             f"without one are not supported", field="architecture")
    order = list(runs)
    return max(children, key=lambda child: order.index(child[0]))[0]


def _blocks(net: nn.Module, runs: dict[str, Run], cam_layer: str) -> list[str]:
    """Top-level children up to the CAM layer, containers opened one level, in running order."""
    order = list(runs)
    blocks = []
    for name, module in net.named_children():
        if name not in runs or order.index(name) > order.index(cam_layer):
            continue
        inner = [f"{name}.{child}" for child, _ in module.named_children()]
        if isinstance(module, (nn.Sequential, nn.ModuleList)) and inner and all(
                _is_feature_map(runs.get(child)) for child in inner):
            blocks += inner
        elif runs[name].shape is not None and len(runs[name].shape) == 4:
            blocks.append(name)
    return sorted(blocks, key=order.index)


def _neck(net: nn.Module, runs: dict[str, Run], cam_layer: str, classifier: str) -> list[str]:
    """Pretrained layers between the CAM layer and the classifier (VGG's and MobileNetV3's first
    linear layers, timm MobileNetV3's `conv_head`), with the activations and dropouts among them:
    the top-level children that run after the CAM layer, the classifier's container opened one
    level, from the first that has parameters (and the dropout before it) on; none where only pooling
    and dropout lie between."""
    order = list(runs)
    after = []
    for name, module in net.named_children():
        if name not in runs or order.index(name) <= order.index(cam_layer):
            continue
        if classifier.startswith(name + "."):
            inner = [f"{name}.{child}" for child, _ in module.named_children()]
            after += inner[:inner.index(classifier)] if classifier in inner else []
        elif name != classifier:
            after.append(name)
    return after[first_with_parameters([net.get_submodule(name) for name in after]):]


def _stages(blocks: list[str], runs: dict[str, Run]) -> list[tuple[str, ...]]:
    return stages_by_resolution([(name, runs[name].shape[2:]) for name in blocks])


def new_head(in_features: int, num_classes: int, hidden: int, dropout: float) -> nn.Sequential:
    """dropout -> [hidden linear -> ReLU -> dropout] -> linear; the last one is `linear`."""
    layers: list[tuple[str, nn.Module]] = [("dropout", nn.Dropout(dropout))]
    if hidden:
        layers += [("hidden", nn.Linear(in_features, hidden)), ("act", nn.ReLU()), ("hidden_dropout", nn.Dropout(dropout))]
    layers.append(("linear", nn.Linear(hidden or in_features, num_classes)))
    return nn.Sequential(OrderedDict(layers))


def adapt(architecture: str, num_classes: int, input_size: int, head_hidden: int = 0,
          dropout: float | None = None, attention: str = "none", attention_stages: int = 1,
          network: nn.Module | None = None, *, attention_gate: str = "residual",
          attention_stride: int | None = None) -> nn.Module:
    """The architecture's own module (its layer names and state-dict keys unchanged), with
    `num_classes` outputs and its `anatomy`. Without `dropout` or `head_hidden` the classifier
    becomes a plain `nn.Linear`; with them (fine-tuning), the head from `new_head`. Attention
    modules live in `network.attention` and are applied by forward hooks. `network`: one that
    `construct(architecture)` made already, to adapt instead of building another."""
    network = network if network is not None else construct(architecture)
    if hasattr(network, "attention"):
        raise ValueError(f"{architecture} already has an `attention` attribute")
    classifier = classifier_name(network)
    in_features = network.get_submodule(classifier).in_features
    if dropout is None and not head_hidden:
        network.set_submodule(classifier, nn.Linear(in_features, num_classes))
        classifier_layer = classifier
    else:
        network.set_submodule(classifier, new_head(in_features, num_classes, head_hidden, dropout or 0.0))
        classifier_layer = f"{classifier}.linear"
    runs = trace(network, input_size)
    cam_layer = _cam_layer(network, runs, input_size)
    blocks = _blocks(network, runs, cam_layer)
    stages = _stages(blocks, runs)
    candidates = [(stage[0], runs[stage[0]].shape[1], _stride(input_size, runs[stage[0]].shape[-1]))
                  for stage in stages]
    points = choose_points(candidates, attention_stages, attention_stride) if attention != "none" else []
    network.attention = nn.ModuleDict({_point_name(block): make_attention(attention, channels, gate=attention_gate)
                                       for block, channels in points})
    for block, _ in points:
        network.get_submodule(block).register_forward_hook(_attend(network.attention[_point_name(block)]))
    # the neck trains as the top stage: first to unfreeze, at the backbone's learning rate
    neck = _neck(network, runs, cam_layer, classifier)
    network.anatomy = Anatomy(cam_layer, classifier_layer, (classifier, "attention"), tuple(blocks + neck),
                              tuple(([tuple(neck[::-1])] if neck else []) + stages))
    return network


def _attend(module: nn.Module):
    def hook(block: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
        return module(output)
    return hook


def _stride(input_size: int, side: int) -> int:
    """The power of two nearest input_size / side (299 px Inception: 8 x 8 is stride 32)."""
    return 2 ** round(math.log2(input_size / side))


def _point_name(block: str) -> str:
    return "after_" + block.replace(".", "_")
