"""The pointing game over HTTP: real object photos pasted at random places on plain and noisy
backgrounds; the peak of the `cam` and `gradcam` heatmaps for the photo's label must fall on the
pasted photo in at least 90% of the 40 cases.

Scoring (the same as bench/pointing_game.py):
- the peak is the argmax of the returned 8-bit heatmap; where several pixels tie at the maximum
  (the rounding to 255 and the bilinear upsampling make small plateaus) their centroid is used;
- a hit is a peak inside the pasted photo's box widened by POINTING_TOLERANCE = 15 px on every side, the
  tolerance of the original pointing game (Zhang et al. 2016, "Top-down neural attention by excitation
  backprop"). At the classifier layer a heatmap cell covers 56 x 56 composite pixels; a peak in a cell
  on the crop's border becomes the centroid of a half-cell plateau, which can sit a few pixels outside
  a photo that fills most of that cell. The strict (0 px) rate is printed too.
"""

from __future__ import annotations

import pytest

from core.imaging import crop_box
from tests.conftest import MODEL
from support import POINTING_TOLERANCE, encode, pointing_game_cases, pointing_hit, upload

BATCH = 10  # files per request
MIN_RATE = 0.9


@pytest.fixture(scope="module")
def cases():
    return [(encode(image, "PNG", compress_level=1), box, label) for image, box, label in pointing_game_cases()]


def play(client, cases, method: str, **form) -> tuple[list[bool], list[bool]]:
    """Send the cases in batches, one target per file; (hits within POINTING_TOLERANCE, strict hits)."""
    hits, strict = [], []
    for start in range(0, len(cases), BATCH):
        chunk = cases[start:start + BATCH]
        files = [upload(blob, f"case{start + i}.png", "image/png") for i, (blob, _, _) in enumerate(chunk)]
        response = client.post(f"/v1/models/{MODEL}/explain", files=files,
                               data={"method": method, "target": [label for _, _, label in chunk], **form})
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert len(results) == len(chunk)
        for result, (_, box, label) in zip(results, chunk):
            assert result["explanation"]["target"]["index"] == label
            hit, strict_hit = pointing_hit(result["explanation"]["heatmap_png"], box)
            hits.append(hit)
            strict.append(strict_hit)
    return hits, strict


def test_the_cases_are_deterministic_and_inside_the_crop(client):
    first, second = list(pointing_game_cases()), list(pointing_game_cases())
    assert len(first) == 40
    assert [(box, label) for _, box, label in first] == [(box, label) for _, box, label in second]
    assert all(a.tobytes() == b.tobytes() for (a, _, _), (b, _, _) in zip(first, second))
    crop = crop_box(448, 448, client.app.state.registry.spec(MODEL))
    for image, (l, t, r, b), _ in first:
        assert image.size == (448, 448)
        assert crop.left <= l < r <= crop.right and crop.top <= t < b <= crop.bottom
        assert 448 / 3 - 1 <= max(r - l, b - t) <= 448 / 2.5 + 1


@pytest.mark.parametrize("method", ["cam", "gradcam"])
def test_the_heatmap_peak_falls_on_the_object(client, cases, method):
    hits, strict = play(client, cases, method)
    rate, strict_rate = sum(hits) / len(hits), sum(strict) / len(strict)
    print(f"\npointing game {method}: {sum(hits)}/{len(hits)} = {rate:.0%} within {POINTING_TOLERANCE} px, "
          f"{sum(strict)}/{len(strict)} = {strict_rate:.0%} strict; misses: "
          f"{[i for i, hit in enumerate(hits) if not hit]}")
    assert rate >= MIN_RATE, f"{method} points at the object in {rate:.0%} of cases, want >= {MIN_RATE:.0%}"
