"""Deletion and insertion scores reward a map that ranks the evidence first."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.explain.faithfulness import deletion_and_insertion, pixel_order

SIZE = 32
HALF = SIZE // 2
MEAN, STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
CHECKER = (torch.arange(HALF)[:, None] + torch.arange(HALF)[None, :]) % 2 * 2.0 - 1.0


def evidence_score(inputs: torch.Tensor) -> torch.Tensor:
    """Two classes; class 0's logit is 8 x the correlation of the top-left quadrant with a
    checkerboard, fine detail that blacking out and blurring both destroy."""
    evidence = (inputs[:, :, :HALF, :HALF] * CHECKER).mean(dim=(1, 2, 3)) * 8.0
    return torch.stack([evidence, torch.zeros_like(evidence)], dim=1)


def quadrant_map(top: bool, left: bool, size: int = SIZE) -> np.ndarray:
    saliency = np.zeros((size, size), dtype=np.float32)
    rows = slice(0, size // 2) if top else slice(size // 2, size)
    cols = slice(0, size // 2) if left else slice(size // 2, size)
    saliency[rows, cols] = 1.0
    return saliency


@pytest.fixture
def image() -> torch.Tensor:
    pixels = torch.zeros(3, SIZE, SIZE)
    pixels[:, :HALF, :HALF] = CHECKER
    return pixels


def test_the_map_on_the_evidence_scores_better_than_one_beside_it(image):
    right = deletion_and_insertion(evidence_score, image, quadrant_map(True, True), 0, MEAN, STD)
    wrong = deletion_and_insertion(evidence_score, image, quadrant_map(False, False), 0, MEAN, STD)
    assert right.deletion < wrong.deletion - 0.2  # p only spans 1/2 .. 1 here
    assert right.insertion > wrong.insertion + 0.1
    assert 0.0 <= right.deletion <= 1.0 and 0.0 <= right.insertion <= 1.0 and right.steps == 16


def test_scores_are_areas_under_the_probability_curves(image):
    """The map ranks exactly the top-left quadrant first, a quarter of the pixels: p moves
    between sigmoid(8) and 1/2 in the first of 4 steps and then stays."""
    scores = deletion_and_insertion(evidence_score, image, quadrant_map(True, True), 0, MEAN, STD, steps=4)
    full = float(torch.sigmoid(torch.tensor(8.0)))
    assert scores.deletion == pytest.approx((full + 0.5) / 8 + 0.5 * 3 / 4, abs=1e-6)
    assert scores.insertion == pytest.approx((0.5 + full) / 8 + full * 3 / 4, abs=1e-3)  # blur leaves ~0


def test_pixel_order_follows_the_upsampled_map():
    order = pixel_order(quadrant_map(False, True, size=4), 8)
    rows, cols = order[:9] // 8, order[:9] % 8  # the block's inner 3x3 at 2x: values stay 1
    assert bool((rows >= 4).all()) and bool((cols < 4).all())
