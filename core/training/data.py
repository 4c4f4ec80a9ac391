"""Images for training: decoded once into memory, split, augmented per batch."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from core import imaging
from core.models.spec import ModelSpec
from core.training.config import Augmentation


def stratified_split(items: list[tuple[Path, int]], val_fraction: float,
                     seed: int) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """Per class, the same fraction (at least one image, when the class has two) goes to validation."""
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted({label for _, label in items}):
        members = [item for item in items if item[1] == label]
        rng.shuffle(members)
        count = min(len(members) - 1, max(1, round(len(members) * val_fraction))) if val_fraction > 0 else 0
        val += members[:count]
        train += members[count:]
    return train, val


def load_squares(items: list[tuple[Path, int]], spec: ModelSpec, max_pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's centre square resized to input_size + resize_margin (uint8 NCHW), so the
    spec's centre crop of it is exactly the spec's preprocessing of the original."""
    side = spec.input_size + spec.resize_margin
    pixels = torch.empty((len(items), 3, side, side), dtype=torch.uint8)
    for index, (path, _) in enumerate(items):
        image = imaging.decode_image(path.read_bytes(), max_pixels)
        short = min(image.size)
        left, top = (image.width - short) / 2, (image.height - short) / 2
        square = image.resize((side, side), Image.Resampling.BICUBIC, box=(left, top, left + short, top + short))
        pixels[index] = torch.from_numpy(np.asarray(square).transpose(2, 0, 1).copy())
    labels = torch.tensor([label for _, label in items], dtype=torch.long)
    return pixels, labels


def make_augmenter(augmentation: Augmentation) -> v2.Compose:
    steps: list[v2.Transform] = []
    if augmentation.flip:
        steps.append(v2.RandomHorizontalFlip())
    if augmentation.rotation or augmentation.zoom or augmentation.shear:
        steps.append(v2.RandomAffine(degrees=augmentation.rotation,
                                     scale=(1 - augmentation.zoom, 1 + augmentation.zoom),
                                     shear=augmentation.shear or None,
                                     interpolation=v2.InterpolationMode.BILINEAR))
    if augmentation.color_jitter:
        jitter = augmentation.color_jitter
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
    return v2.Compose(steps)


class Normalizer:
    """uint8 squares -> the model's input: centre crop, then (x - mean) / std."""

    def __init__(self, spec: ModelSpec) -> None:
        self.crop = v2.CenterCrop(spec.input_size)
        self.mean = torch.tensor(spec.mean)[None, :, None, None]
        self.std = torch.tensor(spec.std)[None, :, None, None]

    def __call__(self, squares: torch.Tensor) -> torch.Tensor:
        return (self.crop(squares).float() - self.mean) / self.std


def batches(count: int, batch_size: int, shuffle: bool, generator: torch.Generator):
    order = torch.randperm(count, generator=generator) if shuffle else torch.arange(count)
    for start in range(0, count, batch_size):
        yield order[start:start + batch_size]
