"""The memory a job is estimated to need before it is queued: each part can push a job past
what a worker has on its own."""

from __future__ import annotations

from core import memory
from core.datasets import ArchiveLimits


def test_the_parts_of_a_fine_tune_estimate():
    small = memory.training_bytes(images=100, classes=4, batch_size=8, input_size=224, resize_margin=32)
    assert 2.0 * 1024**3 < small < 2.3 * 1024**3  # 1 GiB baseline, 20 MB of images, 1.2 GB of activations
    most = ArchiveLimits.max_classes  # GAZER_MAX_CLASSES' default: no data set or fine-tune has more
    many_classes = memory.training_bytes(images=100, classes=most, batch_size=8, input_size=224, resize_margin=32)
    assert 47 * 10**6 < many_classes - small < 49 * 10**6  # a 1000 x 1000 confusion matrix, as a tensor and as JSON
    many_images = memory.training_bytes(images=200_000, classes=4, batch_size=8, input_size=224, resize_margin=32)
    assert many_images - small > 39 * 10**9  # every image preloaded as 256 x 256 x 3 bytes
    few_images = memory.training_bytes(images=8, classes=2, batch_size=128, input_size=224, resize_margin=32)
    assert few_images == memory.training_bytes(images=8, classes=2, batch_size=8, input_size=224, resize_margin=32)


def test_activation_maximization_grows_with_targets_and_size():
    assert memory.maximization_bytes(64, 512) > 16 * memory.maximization_bytes(4, 512) - 16 * 1024**3
    assert memory.describe(memory.maximization_bytes(64, 512)) == "47.9 GiB"
