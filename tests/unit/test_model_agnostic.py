"""Occlusion and RISE: maps from logits alone, on a network whose evidence lies where it is built to.

RegionNet's logit for class k is SCALE times the mean of the (normalized) input over REGIONS[k],
so blacking out region k, and only that, lowers class k's probability: the map for class k must
peak inside region k. RISE is checked against a plain loop over its masks, occlusion against
captum's Occlusion.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import Occlusion as CaptumOcclusion
from torch import nn

from core.errors import InvalidRequest
from core.explain import METHODS
from core.explain.base import normalize_maps
from core.explain.baselines import make_baseline

SIZE = 32
REGIONS = ((4, 18, 12, 28), (18, 4, 28, 12), (20, 20, 30, 30))  # (top, left, bottom, right) per class
SCALE = 4.0
MEAN, STD = (120.0, 110.0, 100.0), (60.0, 55.0, 50.0)  # 0..255 units, as in a ModelSpec
AGNOSTIC = ("occlusion", "rise")
OPTIONS = {"occlusion": {"window": 4, "stride": 2}, "rise": {"masks": 500}}


class RegionNet(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        means = [x[:, :, top:bottom, left:right].mean(dim=(1, 2, 3)) for top, left, bottom, right in REGIONS]
        return SCALE * torch.stack(means, dim=1)


def make_inputs(count: int = 3, size: int = SIZE, seed: int = 1) -> torch.Tensor:
    """Uniform random pixels in 0..255, normalized with MEAN and STD, in float64."""
    pixels = torch.rand((count, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    mean = torch.tensor(MEAN, dtype=torch.float64)[None, :, None, None]
    std = torch.tensor(STD, dtype=torch.float64)[None, :, None, None]
    return (pixels * 255.0 - mean) / std


def explain(method: str, inputs: torch.Tensor, targets, model: nn.Module | None = None, **options):
    options = {**OPTIONS[method], **options}
    targets = torch.tensor(targets) if targets is not None else None
    return METHODS[method](model or RegionNet(), inputs, targets, input_mean=MEAN, input_std=STD, **options)


class CountingScore:
    """RegionNet as a bare scoring function (no torch module), recording each batch's size."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.batches.append(batch.shape[0])
        return RegionNet()(batch)


@pytest.mark.parametrize("method", AGNOSTIC)
def test_the_peak_lies_in_the_region_that_holds_the_evidence(method):
    explanation = explain(method, make_inputs(), [0, 1, 2])
    assert explanation.maps.shape == (3, SIZE, SIZE) and explanation.maps.dtype == np.float32
    assert explanation.maps.min() == 0 and explanation.maps.max() > 0.99
    for image, (top, left, bottom, right) in enumerate(REGIONS):
        saliency = explanation.maps[image]
        rows, columns = np.nonzero(saliency >= saliency.max() - 1e-6)
        assert ((top <= rows) & (rows < bottom) & (left <= columns) & (columns < right)).all(), \
            f"image {image}: peak at {list(zip(rows, columns))}, region {REGIONS[image]}"
        inside = saliency[top:bottom, left:right].mean()
        assert inside > saliency.mean() + 0.2, "the region stands out from the rest of the map"


@pytest.mark.parametrize("method", AGNOSTIC)
def test_a_score_function_is_enough(method):
    """No torch network (model None): only `score`, as for a model served as ONNX alone."""
    inputs = make_inputs(2)
    score = CountingScore()
    explanation = METHODS[method](None, inputs, torch.tensor([2, 0]), score=score, input_mean=MEAN,
                                  input_std=STD, **OPTIONS[method])
    with_network = explain(method, inputs, [2, 0])
    np.testing.assert_array_equal(explanation.maps, with_network.maps)
    assert torch.equal(explanation.logits, RegionNet()(inputs))
    assert explanation.targets.tolist() == [2, 0]
    assert score.batches[0] == 2  # the unmasked images, once, for logits and targets


@pytest.mark.parametrize("method", AGNOSTIC)
def test_per_image_targets_in_a_batch_equal_images_explained_alone(method):
    inputs = make_inputs(3)
    targets = [2, 0, 2]
    batch = explain(method, inputs, targets)
    assert batch.targets.tolist() == targets
    for index, target in enumerate(targets):
        alone = explain(method, inputs[index:index + 1], [target])
        assert np.abs(batch.maps[index] - alone.maps[0]).max() <= 1e-6, f"image {index}"
    other_target = explain(method, inputs[:1], [1])
    assert np.abs(batch.maps[0] - other_target.maps[0]).max() > 0.5


@pytest.mark.parametrize("method", AGNOSTIC)
def test_the_top_class_is_explained_by_default(method):
    inputs = make_inputs(3)
    explanation = explain(method, inputs, None)
    assert explanation.targets.tolist() == RegionNet()(inputs).argmax(dim=1).tolist()


@pytest.mark.parametrize("method", AGNOSTIC)
def test_results_are_repeatable(method):
    inputs = make_inputs(2)
    first, second = explain(method, inputs, [0, 1]), explain(method, inputs, [0, 1])
    np.testing.assert_array_equal(first.maps, second.maps)


def test_rise_seed_decides_the_masks():
    inputs = make_inputs(1)
    seeded = [explain("rise", inputs, [0], masks=100, seed=seed).maps[0] for seed in (7, 7, 8)]
    np.testing.assert_array_equal(seeded[0], seeded[1])
    assert np.abs(seeded[0] - seeded[2]).max() > 0.05


def rise_reference(net: nn.Module, image: torch.Tensor, target: int, masks: int, seed: int, cells: int,
                   p: float) -> torch.Tensor:
    """RISE one mask at a time: sum_i p(target | x * M_i + black * (1 - M_i)) M_i / (N p), mask i
    drawn as its grid, then its shift down, then its shift right, from one seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    size = image.shape[-1]
    cell = math.ceil(size / cells)
    black = (-torch.tensor(MEAN, dtype=torch.float64) / torch.tensor(STD, dtype=torch.float64))[:, None, None]
    saliency = torch.zeros((size, size), dtype=torch.float64)
    for _ in range(masks):
        grid = (torch.rand((cells, cells), generator=generator) < p).float()
        down = int(torch.randint(cell, (), generator=generator))
        right = int(torch.randint(cell, (), generator=generator))
        upsampled = F.interpolate(grid[None, None], size=((cells + 1) * cell, (cells + 1) * cell),
                                  mode="bilinear", align_corners=False)[0, 0]
        mask = upsampled[down:down + size, right:right + size].double()
        with torch.no_grad():
            probability = torch.softmax(net((image * mask + black * (1 - mask))[None]), dim=1)[0, target]
        saliency += probability * mask
    return saliency / (masks * p)


@pytest.mark.parametrize("size, cells, p", [(24, 7, 0.4), (32, 5, 0.5)])
def test_rise_matches_a_plain_loop_over_its_masks(size, cells, p):
    """300 masks: two full chunks of 128 and a partial one."""
    net, inputs, targets = RegionNet(), make_inputs(2, size=size), [1, 2]
    options = {"masks": 300, "seed": 3, "cells": cells, "p": p}
    explanation = explain("rise", inputs, targets, **options)
    baseline = make_baseline("black", inputs, MEAN, STD)
    for index, target in enumerate(targets):
        reference = rise_reference(net, inputs[index], target, **options)
        raw = METHODS["rise"].perturb(net, inputs[index], baseline[index], target, 0.0, **options)
        torch.testing.assert_close(raw, reference, rtol=1e-9, atol=0)
        assert np.abs(explanation.maps[index] - normalize_maps(reference[None])[0]).max() < 1e-5


def test_occlusion_matches_captum():
    """Window positions that tile the image exactly, where captum's and ours coincide; captum's
    attribution of a window is the drop of the forward's output, here the target's probability."""
    net, inputs, targets = RegionNet(), make_inputs(3), [0, 1, 2]
    baseline = make_baseline("black", inputs, MEAN, STD).double()
    for window, stride in ((4, 2), (8, 4), (6, 2)):
        ours = explain("occlusion", inputs, targets, window=window, stride=stride)
        reference = CaptumOcclusion(lambda x: torch.softmax(net(x), dim=1)).attribute(
            inputs, sliding_window_shapes=(3, window, window), strides=(3, stride, stride), baselines=baseline,
            target=torch.tensor(targets))
        assert torch.equal(reference[:, 0], reference[:, 2])  # windows span the channels
        # the map shows where hiding the window lowers the target's probability
        assert np.abs(ours.maps - normalize_maps(reference[:, 0].clamp(min=0))).max() < 1e-6, (window, stride)


def test_occlusion_shows_no_effect_as_0_and_a_window_that_helps_the_target_as_no_evidence():
    """Hiding another class's region raises the target's probability (a negative drop). Min-max
    scaled, that put everything else, background included, at 0.2-0.3 of the heat."""
    explanation = explain("occlusion", make_inputs(1), [0], window=4, stride=2)
    (top, left, bottom, right), (other_top, other_left, other_bottom, other_right) = REGIONS[0], REGIONS[1]
    heat = explanation.maps[0]
    assert heat[top + 1:bottom - 1, left + 1:right - 1].min() > 0.5
    assert heat[other_top:other_bottom, other_left:other_right].max() == 0  # a region that competes
    assert heat[:, :2].max() == 0 and heat[30:, :16].max() == 0  # nothing there


def test_occlusion_covers_the_border_where_the_stride_does_not_reach_it():
    """32 - 6 is no multiple of 4: windows at 0, 4, ..., 24 end at 30, and one more ends at the
    border. It covers region 2's bottom right corner (rows and columns 26-29), so rows and
    columns 30-31 see a drop too."""
    explanation = explain("occlusion", make_inputs(1), [2], window=6, stride=4)
    assert np.isfinite(explanation.maps).all()
    assert explanation.maps[0, 30:, 30:].min() > 0.5


def test_occlusion_windows_wider_than_the_image_cover_it_once():
    score = CountingScore()
    explanation = METHODS["occlusion"](None, make_inputs(1), None, score=score, window=64, stride=16)
    assert score.batches == [1, 1]  # the image, then the image fully occluded
    assert (explanation.maps == 0).all()  # one window: a flat map


def test_scoring_is_batched_and_bounded():
    """8000 masks are scored 128 at a time, occlusion at stride 1 64 inputs at a time: memory
    stays flat however many inputs are scored, and each image is scored on its own."""
    score = CountingScore()
    METHODS["rise"](None, make_inputs(2, size=16), None, score=score, masks=8000)
    assert score.batches == [2] + ([128] * 62 + [64]) * 2
    score = CountingScore()
    METHODS["occlusion"](None, make_inputs(1), None, score=score, window=4, stride=1)
    assert score.batches == [1] + [64] * 13 + [841 - 13 * 64]  # 29 x 29 window positions


BAD_OPTIONS = [
    ("occlusion", {"window": 3}), ("occlusion", {"window": 225}), ("occlusion", {"stride": 0}),
    ("occlusion", {"stride": 225}),
    ("rise", {"masks": 0}), ("rise", {"masks": 8001}), ("rise", {"seed": -1}), ("rise", {"seed": 2**32}),
    ("rise", {"cells": 1}), ("rise", {"cells": 33}), ("rise", {"p": 0}), ("rise", {"p": 1.5}),
    ("rise", {"p": math.nan}),
]


@pytest.mark.parametrize("method, options", BAD_OPTIONS, ids=[f"{m}-{o}" for m, o in BAD_OPTIONS])
def test_options_out_of_bounds_are_refused(method, options):
    with pytest.raises(InvalidRequest) as raised:
        METHODS[method].options(method, options)
    assert raised.value.extra.get("field") == next(iter(options))
    with pytest.raises(InvalidRequest):  # also when called directly
        explain(method, make_inputs(1), None, **options)


@pytest.mark.parametrize("method, option", [("occlusion", "steps"), ("rise", "window"), ("rise", "layer")])
def test_an_option_the_method_does_not_take_is_refused_by_name(method, option):
    with pytest.raises(InvalidRequest, match=f"{method} takes no option '{option}'") as raised:
        METHODS[method].options(method, {option: 1})
    assert raised.value.extra.get("field") == option


def test_defaults_and_limits():
    assert METHODS["occlusion"].options("occlusion", {}) == {"window": 32, "stride": 16}
    assert METHODS["rise"].options("rise", {}) == {"masks": 1000, "seed": 0, "cells": 7, "p": 0.5}
    assert METHODS["rise"].options("rise", {"masks": 8000, "seed": 2**32 - 1, "cells": 32, "p": 1})["masks"] == 8000
    assert METHODS["occlusion"].options("occlusion", {"window": 224, "stride": 1})["window"] == 224
    maps = explain("rise", make_inputs(1), None, masks=1, seed=2**32 - 1).maps
    assert np.isfinite(maps).all()


def test_methods_declare_themselves_model_agnostic():
    assert sorted(name for name, method in METHODS.items() if method.model_agnostic) == ["occlusion", "rise"]
    assert not any(METHODS[name].uses_layer for name in AGNOSTIC)
