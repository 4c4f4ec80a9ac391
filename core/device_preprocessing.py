"""Predict's decoding and preprocessing on the model's device, for a GPU node, where the CPU's
decoding bounds throughput: on a lent H200 one API process served 629 images/s, 0.13 of raw
ONNX Runtime at batch 256, decoding on 3.4 cores' worth of CPU (README, Measured on a lent GPU).

JPEGs are decoded by torchvision.io.decode_jpeg (nvJPEG on CUDA, libjpeg-turbo on the CPU) and
resized by imaging.resize_matrices, Pillow's own resampling as two matrix products per image.
On the CPU the input is the served preprocessing's within 0.1 level on average, a few pixels up
to 7 levels off (Pillow runs its two passes in either order, rounding between them); nvJPEG
rounds its own way, and its agreement is tested where a GPU is lent (tests/gpu).

Only uploads it decodes as the CPU path would are taken (`decodable`): JPEGs in colour or grey,
upright, within the limits, and of bounded cost here. For any other request, and where the
decoder refuses a file, the CPU path decodes every file, and refuses what it refuses.
"""

from __future__ import annotations

import functools
import io
import threading
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from core import imaging
from core.image_structure import check_structure
from core.models.spec import ModelSpec

_EXIF_ORIENTATION = 0x0112
# Larger photos take the CPU path, which decodes them at a reduced scale (imaging.needed_sides);
# here one is decoded whole. A side is bounded too: each size's resize matrices are kept.
MAX_PIXELS = 4096 * 4096
MAX_SIDE = 4096
# nvJPEG decodes a progressive JPEG's scans on the CPU, holding torchvision's decoder lock for
# all: larger progressive ones (up to imaging.MAX_JPEG_SCANS scans) take the CPU path.
MAX_PROGRESSIVE_PIXELS = 2 * 1024 * 1024
# One preprocess at a time on CUDA: torchvision's nvJPEG decoding writes on a stream of its own
# without waiting for the caller's, where another thread's freed buffers may still be read.
_cuda_lock = threading.Lock()


def decodable(blobs: list[bytes], max_pixels: int, max_total_pixels: int) -> bool:
    """Whether every upload is a JPEG that decodes on the device to what decode_image gives:
    YCbCr or grey (no CMYK, no Adobe colour transform), with no EXIF rotation, no more scans
    than imaging.MAX_JPEG_SCANS, and within the pixel limits and this module's bounds. It reads
    the headers and counts the scans' markers; it decodes nothing."""
    total = 0
    for blob in blobs:
        try:
            check_structure(blob)
            image = Image.open(io.BytesIO(blob), formats=("JPEG",))
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        except Exception:  # not a JPEG, or a header too damaged to read: the CPU path says which
            return False
        pixels = image.width * image.height
        total += pixels
        most = MAX_PROGRESSIVE_PIXELS if "progressive" in image.info else MAX_PIXELS
        if (image.format != "JPEG" or image.mode not in ("RGB", "L") or orientation != 1 or pixels == 0
                or pixels > min(max_pixels, most) or max(image.size) > MAX_SIDE or "adobe" in image.info
                or imaging.jpeg_scans(blob) > imaging.MAX_JPEG_SCANS):
            return False
    return total <= max_total_pixels


@dataclass(frozen=True)
class _Resize:
    """imaging.resize_matrices on the device, cut to the rows and columns of the image they read."""

    rows: torch.Tensor      # (S, last_row - first_row)
    columns: torch.Tensor   # (last_column - first_column, S)
    first_row: int
    last_row: int
    first_column: int
    last_column: int


def _span(weights: np.ndarray) -> tuple[int, int]:
    """The first and past-the-last source sample that any output reads."""
    used = np.flatnonzero(np.any(weights != 0, axis=0))
    return int(used[0]), int(used[-1]) + 1


@functools.lru_cache(maxsize=16)  # uploads come in a few sizes; each entry at most 2 x 4096 x S floats
def _resize(width: int, height: int, spec: ModelSpec, resize: str, device: torch.device) -> _Resize:
    rows, columns = imaging.resize_matrices(width, height, spec, resize)
    (first_row, last_row), (first_column, last_column) = _span(rows), _span(columns)
    return _Resize(torch.from_numpy(rows[:, first_row:last_row].copy()).to(device),
                   torch.from_numpy(columns[:, first_column:last_column].T.copy()).to(device),
                   first_row, last_row, first_column, last_column)


def preprocess(blobs: list[bytes], spec: ModelSpec, resize: str, device: torch.device) -> torch.Tensor:
    """`blobs` (each `decodable`) -> float32 NCHW batch on `device`, normalized as the spec says,
    as imaging.preprocess makes it; on CUDA, finished before it returns (ONNX Runtime reads it
    on a stream of its own). Raises RuntimeError where the decoder refuses a file."""
    imaging.check_resize(resize)  # before decoding
    if device.type != "cuda":
        return _preprocess(blobs, spec, resize, device)
    with _cuda_lock:
        torch.cuda.current_stream(device).synchronize()
        batch = _preprocess(blobs, spec, resize, device)
        torch.cuda.current_stream(device).synchronize()
        return batch


def _preprocess(blobs: list[bytes], spec: ModelSpec, resize: str, device: torch.device) -> torch.Tensor:
    size = spec.input_size
    images = decode_jpeg([torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in blobs],
                         mode=ImageReadMode.RGB, device=device)
    batch = torch.empty((len(blobs), 3, size, size), dtype=torch.float32, device=device)
    for index, image in enumerate(images):
        plan = _resize(image.shape[2], image.shape[1], spec, resize, device)
        pixels = image[:, plan.first_row:plan.last_row, plan.first_column:plan.last_column].float()
        across = torch.floor(pixels @ plan.columns + 0.5).clamp_(0, 255)
        batch[index] = torch.floor(plan.rows @ across + 0.5).clamp_(0, 255)
    mean = torch.from_numpy(np.asarray(spec.mean, dtype=np.float32)).to(device)[:, None, None]
    inverse_std = torch.from_numpy(1.0 / np.asarray(spec.std, dtype=np.float32)).to(device)[:, None, None]
    return batch.sub_(mean).mul_(inverse_std)
