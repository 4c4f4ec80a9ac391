"""Real photos from installed packages, and helpers to send them."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data


def foolbox_imagenet_photos() -> list[tuple[Path, int]]:
    """The 20 ImageNet photos shipped in the foolbox wheel, with the label in their file name."""
    spec = importlib.util.find_spec("foolbox")
    assert spec is not None and spec.submodule_search_locations, "foolbox==3.3.4 is not installed"
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    photos = sorted(folder.glob("imagenet_*.jpg"))
    return [(path, int(path.stem.split("_")[-1])) for path in photos]


def chelsea() -> Image.Image:
    return Image.fromarray(data.chelsea())


def coffee() -> Image.Image:
    return Image.fromarray(data.coffee())


def encode(image: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def upload(blob: bytes, name: str = "image.jpg", content_type: str = "image/jpeg") -> tuple:
    return ("file", (name, blob, content_type))


def png_size(blob: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(blob)).size


def decode_png(blob: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(blob)))
