"""Loading a fine-tune's images: its progress is told as it goes, and it stops when the job
is cancelled or out of time (a large data set takes minutes to decode)."""

from __future__ import annotations

import dataclasses
from typing import Any

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


@pytest.mark.parametrize("count, batch_size, sizes", [(10, 3, [3, 3, 4]), (9, 3, [3, 3, 3]), (1, 3, [1]),
                                                      (4, 3, [4]), (2, 3, [2])])
def test_a_last_batch_of_one_image_joins_the_one_before(count, batch_size, sizes):
    batches = list(data.batches(count, batch_size, True, torch.Generator().manual_seed(0)))
    assert [len(batch) for batch in batches] == sizes and sorted(torch.cat(batches).tolist()) == list(range(count))
    assert data.batch_count(count, batch_size) == len(sizes)  # what the progress bar counts


def shapes_and_lite0(folder, per_class: int) -> tuple[list, Any, torch.nn.Module]:
    """(path, label) items of generated shape photos of two classes, and Lite0's spec and network."""
    import numpy as np

    from core.models.registry import ModelRegistry
    from core.storage import Storage
    from support import SHAPE_CLASSES, shape_image

    rng, items = np.random.default_rng(0), []
    for label, kind in enumerate(SHAPE_CLASSES[:2]):
        for index in range(per_class):
            shape_image(kind, rng, 48).save(path := folder / f"{kind}-{index}.png")
            items.append((path, label))
    return items, *ModelRegistry(Storage(folder / "data"), 1).load_network("efficientnet_lite0")


def test_fine_tuning_at_input_size_32_whatever_the_last_batch(tmp_path):
    """10 training images in batches of 3 left one image alone, whose 1 x 1 feature map a training
    BatchNorm refused: "Expected more than 1 value per channel when training"."""
    from core.job_runners import fine_tune_config
    from core.training.finetune import fine_tune

    items, spec, network = shapes_and_lite0(tmp_path, 6)
    config = fine_tune_config({"dataset_id": "shapes", "output_model": "small", "strategy": "fine_tune",
                               "unfreeze_blocks": 1, "epochs": 2, "batch_size": 3, "input_size": 32,
                               "val_fraction": 1 / 6})
    trained = fine_tune(config, spec, network, ["a", "b"], items, lambda *a, **k: None, lambda: False,
                        torch.device("cpu"), 10**7)
    assert len(trained.metrics["history"]) == 2


def test_a_fine_tune_stops_between_validation_batches_when_told(tmp_path):
    """The validation pass looked at nothing: 190 images at 1024 px took 236 s, which a cancel,
    the job's time limit or a worker's stop (then killed, its job lost) had to wait out."""
    from core.job_runners import fine_tune_config
    from core.training.finetune import fine_tune

    items, spec, network = shapes_and_lite0(tmp_path, 8)
    config = fine_tune_config({"dataset_id": "shapes", "output_model": "small", "strategy": "feature_extraction",
                               "epochs": 1, "batch_size": 2, "input_size": 32, "val_fraction": 0.5})
    reported: list[dict] = []
    looks: list[bool] = []

    def should_stop() -> bool:  # once training's last step is reported: during validation
        looks.append(bool(reported) and "step" in reported[-1] and reported[-1]["step"] == reported[-1]["steps"])
        return looks[-1]

    with pytest.raises(JobCancelled):
        fine_tune(config, spec, network, ["a", "b"], items, lambda *a, **k: reported.append(k), should_stop,
                  torch.device("cpu"), 10**7)
    assert not any("val_accuracy" in (told.get("metrics") or {}) for told in reported)  # validation never ended
