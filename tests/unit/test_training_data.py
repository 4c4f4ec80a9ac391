"""Loading a fine-tune's images: its progress is told as it goes, and it stops when the job
is cancelled or out of time (a large data set takes minutes to decode)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image

from core import imaging

from core.jobs import JobCancelled
from core.models.catalog import builtin_spec
from core.training import data
from core.training.config import Augmentation
from core.training.data import LOADED_BETWEEN_LOOKS
from support import chelsea


def test_loading_tells_its_progress_and_stops_when_told(tmp_path):
    spec = builtin_spec("efficientnet_lite0")
    items = []
    for index in range(3 * LOADED_BETWEEN_LOOKS + 5):
        path = tmp_path / f"{index}.png"
        Image.new("RGB", (300, 260), (index, 100, 200)).save(path)
        items.append((path, index % 2))
    told: list[int] = []
    pixels, labels = data.load_squares(items, spec, 10**8, loaded=told.append)
    side = spec.input_size + spec.resize_margin
    assert pixels.shape == (len(items), 3, side, side) and labels.tolist() == [index % 2 for index in range(len(items))]
    assert told == [LOADED_BETWEEN_LOOKS, 2 * LOADED_BETWEEN_LOOKS, 3 * LOADED_BETWEEN_LOOKS, len(items)]
    assert pixels[7, 0].unique().tolist() == [7]  # each image in its place

    looks = []
    with pytest.raises(JobCancelled):
        data.load_squares(items, spec, 10**8, should_stop=lambda: looks.append(1) or len(looks) == 2)
    assert len(looks) == 2  # stopped at its second look, after 2 * LOADED_BETWEEN_LOOKS images


def test_training_crops_a_square_where_serving_does_with_an_odd_margin(tmp_path):
    """An uploaded torchvision-style model resized to 342 for a 299 crop (inception_v3's): the
    training crop started at 21 and serving's (torchvision's CenterCrop) at 22, a pixel apart."""
    spec = dataclasses.replace(builtin_spec("efficientnet_lite0"), input_size=299, resize_margin=43,
                               torchvision_resize=True)
    square = chelsea().crop((0, 0, 300, 300))
    square.save(tmp_path / "square.png")
    trained_on = data.Normalizer(spec)(data.load_squares([(tmp_path / "square.png", 0)], spec, 10**8)[0])
    served, _ = imaging.preprocess([square], spec, "crop")
    assert torch.equal(trained_on, torch.as_tensor(served))
    # training batches go through the augmentation's resampling, which centred its window exactly:
    # half a pixel from serving's crop, 2.35 levels off on average
    unchanged = Augmentation(flip=False, rotation=0, zoom=0, shear=0, color_jitter=0)
    squares = data.load_squares([(tmp_path / "square.png", 0)], spec, 10**8)[0]
    augmented = data.Normalizer(spec)(data.augment_batch(squares, unchanged, spec.input_size, torch.Generator()))
    assert (augmented - trained_on).abs().max() * spec.std[0] < 0.01  # in pixel levels
