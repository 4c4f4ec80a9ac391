"""Images for training: decoded once into memory, split, augmented per batch."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from core import imaging
from core.jobs import JobCancelled, ShouldStop
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


LOADED_BETWEEN_LOOKS = 32  # images decoded between two looks at should_stop and two reports


def load_squares(items: list[tuple[Path, int]], spec: ModelSpec, max_pixels: int,
                 should_stop: ShouldStop = lambda: False,
                 loaded: Callable[[int], None] = lambda count: None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's centre square resized to input_size + resize_margin (uint8 NCHW) as
    imaging.resize_region does it, so the centre crop of it is the spec's preprocessing of the
    original (identical on chelsea; within a pixel level where reducing_gap applies). Every
    LOADED_BETWEEN_LOOKS images, and at the end, it is told `loaded(count)`; it raises
    JobCancelled once should_stop() says so: a large data set takes minutes to decode."""
    side = spec.input_size + spec.resize_margin
    pixels = torch.empty((len(items), 3, side, side), dtype=torch.uint8)
    for index, (path, _) in enumerate(items):
        if index % LOADED_BETWEEN_LOOKS == 0 and index:
            if should_stop():
                raise JobCancelled()
            loaded(index)
        image = imaging.decode_image(path.read_bytes(), max_pixels)
        short = min(image.size)
        left, top = (image.width - short) / 2, (image.height - short) / 2
        square = imaging.resize_region(image, (left, top, left + short, top + short), side, spec)
        pixels[index] = torch.from_numpy(np.asarray(square).transpose(2, 0, 1).copy())
    loaded(len(items))
    labels = torch.tensor([label for _, label in items], dtype=torch.long)
    return pixels, labels


def augment_batch(squares: torch.Tensor, augmentation: Augmentation, output_size: int,
                  generator: torch.Generator) -> torch.Tensor:
    """Random flip, rotation, zoom and shear (one affine resampling per batch, its centre
    `output_size` window), then brightness, contrast and saturation jitter, each drawn per
    image from `generator`. uint8 (B, 3, S, S) -> float (B, 3, output_size, output_size) in 0..255,
    on the squares' device; the draws come from `generator` on the CPU wherever that is, so a seed
    draws the same augmentation on any device."""
    count, device = squares.shape[0], squares.device
    images = squares.float()

    def uniform(spread: float) -> torch.Tensor:
        return (torch.rand(count, generator=generator) * 2 - 1) * spread

    def per_image(spread: float) -> torch.Tensor:
        return (1 + uniform(spread)).to(device)[:, None, None, None]

    angle = torch.deg2rad(uniform(augmentation.rotation))
    shear = torch.deg2rad(uniform(augmentation.shear))
    scale = 1 + uniform(augmentation.zoom)
    flip = torch.where(torch.rand(count, generator=generator) < 0.5, -1.0, 1.0) if augmentation.flip \
        else torch.ones(count)
    # forward map: scale * rotation * shear * flip; the grid needs its inverse, applied to the
    # output window (the centre crop) expressed in the input's normalized coordinates
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
    forward = torch.zeros(count, 2, 2)
    forward[:, 0, 0], forward[:, 0, 1] = cos * flip, (cos * tan - sin)
    forward[:, 1, 0], forward[:, 1, 1] = sin * flip, (sin * tan + cos)
    forward = forward * scale[:, None, None]
    side = squares.shape[-1]
    theta = torch.zeros(count, 2, 3)
    theta[:, :, :2] = torch.linalg.inv(forward) * (output_size / side)
    # centred where serving crops: an odd margin puts the window half a pixel off the centre
    theta[:, :, 2] = (2 * imaging.centre_offset(side, output_size) - (side - output_size)) / side
    grid = F.affine_grid(theta.to(device), [count, 3, output_size, output_size], align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    jitter = augmentation.color_jitter
    if jitter:
        luma = _LUMA.to(device)
        images = images * per_image(jitter)
        grey = (images * luma).sum(dim=1, keepdim=True)
        mean_grey = grey.mean(dim=(2, 3), keepdim=True)
        images = (images - mean_grey) * per_image(jitter) + mean_grey
        grey = (images * luma).sum(dim=1, keepdim=True)
        images = (images - grey) * per_image(jitter) + grey
    return images.clamp(0, 255)


_LUMA = torch.tensor([0.299, 0.587, 0.114])[None, :, None, None]


class Normalizer:
    """Pixels (0..255) -> the model's input, (x - mean) / std; uint8 squares are centre-cropped first."""

    def __init__(self, spec: ModelSpec) -> None:
        self.size = spec.input_size
        self.mean = torch.tensor(spec.mean)[None, :, None, None]
        self.std = torch.tensor(spec.std)[None, :, None, None]

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[-1] != self.size:
            margin = imaging.centre_offset(pixels.shape[-1], self.size)  # as serving crops
            pixels = pixels[..., margin:margin + self.size, margin:margin + self.size]
        return (pixels.float() - self.mean.to(pixels.device)) / self.std.to(pixels.device)


def _batch_starts(count: int, batch_size: int) -> list[int]:
    """Batches of `batch_size`; a last batch of one image joins the one before it, since BatchNorm
    cannot train on one image whose feature map is 1 x 1 (Lite0's head at input_size 32)."""
    starts = list(range(0, count, batch_size))
    if len(starts) > 1 and count - starts[-1] == 1:
        starts.pop()
    return starts


def batch_count(count: int, batch_size: int) -> int:
    return len(_batch_starts(count, batch_size))


def batches(count: int, batch_size: int, shuffle: bool, generator: torch.Generator):
    """Indices of `count` images in batch_count(count, batch_size) batches."""
    order = torch.randperm(count, generator=generator) if shuffle else torch.arange(count)
    starts = _batch_starts(count, batch_size)
    for start, end in zip(starts, starts[1:] + [count]):
        yield order[start:end]
