"""What every explainer shares: layer capture, target scores, normalization, the three families.

Explainers never touch the caller's model state: hooks are always removed, gradients come
from `torch.autograd.grad` (parameters' `.grad` stay as they were) and gradient mode is
switched on locally, so a caller inside `torch.no_grad()` still gets gradients.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from core.errors import InvalidRequest, TargetOutOfRange, UnknownLayer
from core.explain.baselines import make_baseline
from core.params import check_params


@dataclass(frozen=True)
class GateRange:
    """An attention gate's raw values over one image, before any scaling; `flat`: so nearly
    uniform that its map is shown as zeros instead of stretched noise."""
    min: float
    max: float
    mean: float
    flat: bool


@dataclass
class Explanation:
    maps: np.ndarray        # (batch, h, w) float32 in [0, 1], at layer or input resolution
    logits: torch.Tensor    # (batch, classes) from the explained forward pass
    targets: torch.Tensor   # (batch,) class explained for each image
    gates: list[GateRange] | None = None  # attention maps only: each image's raw gate


class _Captured:
    activation: torch.Tensor | None = None


def find_layer(model: nn.Module, layer: str) -> nn.Module:
    module = dict(model.named_modules()).get(layer) if layer else None
    if module is None:
        raise UnknownLayer(f"the model has no layer {layer!r}")
    return module


@contextmanager
def capture(model: nn.Module, layer: str, start_grad_here: bool = False) -> Iterator[_Captured]:
    """Record `layer`'s output during the next forward pass.

    With `start_grad_here`, the output is swapped for a leaf that requires grad and gradient
    mode is switched on from that point of the forward pass: run the forward under
    `torch.no_grad()` and only the layers after `layer` record a graph. Gradients with
    respect to the layer's output are the same; the part before it costs no autograd memory.
    """
    captured = _Captured()

    def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
        if captured.activation is not None:
            raise RuntimeError(f"layer {layer!r} runs more than once per forward pass")
        if start_grad_here:
            torch.set_grad_enabled(True)
            output = output.detach().requires_grad_(True)
        captured.activation = output
        # The network goes on with a copy: an in-place op after the layer (DenseNet's
        # F.relu(features, inplace=True)) would otherwise change what was captured, or write
        # into a leaf that requires grad.
        return output.clone()

    handle = find_layer(model, layer).register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


TOP_CLASS = -1  # as a target: the image's own top class (requests batched together may mix both)


def resolve_targets(logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """The given targets (checked against the logits), else each image's top class; a target
    of TOP_CLASS is that image's top class."""
    if targets is None:
        return logits.argmax(dim=1)
    if targets.numel() and (targets.min() < TOP_CLASS or targets.max() >= logits.shape[1]):
        raise TargetOutOfRange(f"targets must be class indices 0..{logits.shape[1] - 1}", field="target")
    targets = targets.to(logits.device)
    return torch.where(targets == TOP_CLASS, logits.argmax(dim=1), targets)


def target_score(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of each image's target logit: its gradient is per-image."""
    return logits.gather(1, targets[:, None]).sum()


def normalize_maps(maps: torch.Tensor) -> np.ndarray:
    """Per image, min-max scale to [0, 1]; a map of one value everywhere is all zeros.
    pytorch-grad-cam divides by the range + 1e-7 instead, which leaves a map of small values
    (an untrained network's gradients, say) far below 1 while its heatmap is stretched to 255;
    on maps whose range is well above 1e-7 the two agree."""
    flat = maps.detach().float().flatten(1)
    scaled = flat - flat.min(dim=1, keepdim=True).values
    spread = scaled.max(dim=1, keepdim=True).values
    scaled = scaled / torch.where(spread > 0, spread, torch.ones_like(spread))
    return scaled.view_as(maps).cpu().numpy()


def check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low} and {high}, got {value}", field=name)


@dataclass(frozen=True)
class NoOptions:
    """A method that takes no options."""


class Method:
    """What the pipeline needs to know about a method before running it."""

    # The options a client may set, their defaults and bounds (fields made with core.params.param).
    Options: type = NoOptions
    uses_layer = False
    map_at_layer = False              # its map has its layer's resolution, not the input's
    default_layer_only = False        # only at the layer that feeds the classifier (CAM)
    needs_linear_head = False         # reads the classifier's weights: no hidden head layer
    needs_spatial_attention = False   # only for models with a spatial attention module
    needs_guided_activations = False  # only for networks of ReLUs (core.explain.guided_backprop.guides)
    scores_masked_inputs = False      # takes `score`: logits of input batches, no gradients
    takes_feature_source = False      # takes `features`: logits and feature map from any forward (CAM)
    # a CAM-family `combine` that reads only the activations and their gradients, not the model
    # or the inputs: at the classifier's layer its map follows from the feature map (core.explain.cam)
    from_activations_and_gradients = False
    model_agnostic = False            # needs only `score`: works without the torch network (ONNX-only models)

    def cost(self, options: dict[str, Any], input_size: int, layer_channels: int) -> int:
        """Forward-equivalents per image (a backward counts as one more), for budgets. `options`
        are checked ones (every default filled in)."""
        return 2

    @property
    def option_names(self) -> list[str]:
        """The options this method takes (its `Options`' fields)."""
        return [field.name for field in dataclasses.fields(self.Options)]

    def options(self, name: str, given: dict[str, Any]) -> dict[str, Any]:
        """The client's options checked against `Options` (every default filled in): an option
        this method does not take, or a value out of bounds, is an InvalidRequest naming it."""
        known = self.option_names
        for option in given:
            if option not in known:
                takes = f"its options are {', '.join(known)}" if known else "it takes none"
                raise InvalidRequest(f"{name} takes no option {option!r}; {takes}", field=option, valid=known)
        return self.checked(**given)

    def checked(self, **options: Any) -> dict[str, Any]:
        """`options` with the defaults of those not given, after checking their bounds."""
        values = self.Options(**options)
        check_params(values)
        return dataclasses.asdict(values)


class LayerMethod(Method):
    """CAM family: a map over a layer's channels, weighted by what `weigh` says."""

    uses_layer = True
    map_at_layer = True
    needs_gradients = True

    def __call__(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor | None,
                 layer: str, **options: object) -> Explanation:
        with capture(model, layer, start_grad_here=self.needs_gradients) as captured, torch.no_grad():
            logits = model(inputs)
            activations = captured.activation
            targets = resolve_targets(logits, targets)
            gradients = None
            if self.needs_gradients:
                gradients = torch.autograd.grad(target_score(logits, targets), activations)[0]
        maps = self.combine(model, inputs, activations.detach(), gradients, targets, **options)
        return Explanation(normalize_maps(torch.relu(maps)), logits.detach(), targets)

    def combine(self, model: nn.Module, inputs: torch.Tensor, activations: torch.Tensor,
                gradients: torch.Tensor | None, targets: torch.Tensor, **options: object) -> torch.Tensor:
        weights = self.weigh(activations, gradients)
        return (weights[:, :, None, None] * activations).sum(dim=1)

    def weigh(self, activations: torch.Tensor, gradients: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


def input_gradients(model: nn.Module, inputs: torch.Tensor,
                    targets: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """d(target logit)/d(input) for each image, with the logits and the targets used."""
    with torch.enable_grad():
        x = inputs.detach().requires_grad_(True)
        logits = model(x)
        targets = resolve_targets(logits, targets)
        gradients = torch.autograd.grad(target_score(logits, targets), x)[0]
    return gradients, logits.detach(), targets


def forward_logits(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(inputs)


class InputMethod(Method):
    """Gradient family: a per-pixel attribution, reduced over colour channels to a map."""

    def __call__(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor | None,
                 layer: str | None = None, **options: object) -> Explanation:
        attributions, logits, targets = self.attribute(model, inputs, targets, layer=layer, **options)
        return Explanation(normalize_maps(self.reduce(attributions)), logits, targets)

    def attribute(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor | None,
                  layer: str | None = None, **options: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @staticmethod
    def reduce(attributions: torch.Tensor) -> torch.Tensor:
        return attributions.abs().amax(dim=1)


Score = Callable[[torch.Tensor], torch.Tensor]


class PerturbationMethod(Method):
    """Model-agnostic family: a map from the target's probability on perturbed copies of each
    image, where perturbed pixels take the black baseline. Only `score` (logits of a batch of
    inputs) is needed, so it works for a model served as ONNX alone; without `score`, `model` is
    the scorer. Each image is perturbed and scored on its own, so its map does not depend on the
    rest of the batch."""

    model_agnostic = True
    # True: its raw map is signed (a probability's drop: below 0 where hiding a region helps the
    # target), and the map shows the evidence for the target alone, 0 for no effect, as the CAM
    # family's ReLU does; min-max scaled, no effect would show as heat
    evidence_only = False

    def __call__(self, model: nn.Module | None, inputs: torch.Tensor, targets: torch.Tensor | None,
                 layer: str | None = None, score: Score | None = None,
                 input_mean: tuple[float, ...] = (0.0, 0.0, 0.0), input_std: tuple[float, ...] = (1.0, 1.0, 1.0),
                 **options: Any) -> Explanation:
        ours = {field.name for field in dataclasses.fields(self.Options)}
        # keywords meant for other families (such as `classifier`) are not ours
        options = self.checked(**{name: value for name, value in options.items() if name in ours})
        score = score if score is not None else model
        with torch.no_grad():
            logits = score(inputs)
            targets = resolve_targets(logits, targets)
            probabilities = torch.softmax(logits, dim=1).gather(1, targets[:, None])[:, 0]
            baseline = make_baseline("black", inputs, input_mean, input_std)
            maps = torch.stack([self.perturb(score, inputs[index], baseline[index], int(targets[index]),
                                             float(probabilities[index]), **options)
                                for index in range(inputs.shape[0])])
        return Explanation(normalize_maps(maps.clamp(min=0) if self.evidence_only else maps), logits.detach(), targets)

    def perturb(self, score: Score, image: torch.Tensor, baseline: torch.Tensor, target: int,
                probability: float, **options: Any) -> torch.Tensor:
        """One image's (H, W) map; `probability`: the target's on the unperturbed image."""
        raise NotImplementedError
