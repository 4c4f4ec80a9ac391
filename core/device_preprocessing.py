"""Predict's decoding and preprocessing on the model's device, for a GPU node, where the CPU's
decoding bounds throughput: on a lent H200 one API process served 629 images/s, 0.13 of raw
ONNX Runtime at batch 256, decoding on 3.4 cores' worth of CPU (README, Measured on a lent GPU).

JPEGs are decoded by torchvision.io.decode_jpeg (nvJPEG on CUDA, libjpeg-turbo on the CPU) and
resized by imaging.resize_matrices, Pillow's own resampling as two matrix products per image.
On the CPU both give the served preprocessing's pixels within a level or two (the order of
Pillow's two passes); nvJPEG's decoding differs from libjpeg-turbo's by its own rounding, and
its agreement is tested where a GPU is lent (tests/gpu).

Only uploads it decodes as the CPU path would are taken (`decodable`): JPEGs in colour or grey,
upright, within the limits. For any other request, and where the decoder refuses a file, the
CPU path decodes every file, and refuses what it refuses.
"""

from __future__ import annotations

import functools
import io

import numpy as np
import torch
from PIL import Image

from core import imaging
from core.models.spec import ModelSpec

_EXIF_ORIENTATION = 0x0112
# Larger photos take the CPU path, which decodes them at a reduced scale (imaging.needed_sides);
# here one would be decoded whole, and its float copy for the resize takes 12 bytes a pixel.
MAX_PIXELS = 4096 * 4096


def decodable(blobs: list[bytes], max_pixels: int, max_total_pixels: int) -> bool:
    """Whether every upload is a JPEG that decodes on the device to what decode_image gives:
    YCbCr or grey (no CMYK, no Adobe colour transform), with no EXIF rotation, no more scans
    than imaging.MAX_JPEG_SCANS, and within the pixel limits (and MAX_PIXELS). It reads headers only."""
    total = 0
    for blob in blobs:
        try:
            image = Image.open(io.BytesIO(blob), formats=("JPEG",))
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        except Exception:  # not a JPEG, or a header too damaged to read: the CPU path says which
            return False
        pixels = image.width * image.height
        total += pixels
        if (image.format != "JPEG" or image.mode not in ("RGB", "L") or orientation != 1 or pixels == 0
                or pixels > min(max_pixels, MAX_PIXELS) or "adobe" in image.info
                or blob.count(b"\xff\xda") > imaging.MAX_JPEG_SCANS):
            return False
    return total <= max_total_pixels


@functools.lru_cache(maxsize=64)  # uploads come in a few sizes
def _matrices(width: int, height: int, spec: ModelSpec, resize: str,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    rows, columns = imaging.resize_matrices(width, height, spec, resize)
    return torch.from_numpy(rows).to(device), torch.from_numpy(columns.T.copy()).to(device)


def preprocess(blobs: list[bytes], spec: ModelSpec, resize: str, device: torch.device) -> torch.Tensor:
    """`blobs` (each `decodable`) -> float32 NCHW batch on `device`, normalized as the spec says,
    as imaging.preprocess makes it; on CUDA, finished before it returns (ONNX Runtime reads it
    on a stream of its own). Raises RuntimeError where the decoder refuses a file."""
    from torchvision.io import ImageReadMode, decode_jpeg  # here: only GPU nodes' predicts need it

    imaging.crop_box(1, 1, spec, resize)  # refuses an unknown resize as the CPU path does
    size = spec.input_size
    images = decode_jpeg([torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in blobs],
                         mode=ImageReadMode.RGB, device=device)
    batch = torch.empty((len(blobs), 3, size, size), dtype=torch.float32, device=device)
    for index, image in enumerate(images):
        rows, columns = _matrices(image.shape[2], image.shape[1], spec, resize, device)
        across = torch.floor(image.float() @ columns + 0.5).clamp_(0, 255)
        batch[index] = torch.floor(rows @ across + 0.5).clamp_(0, 255)
    mean = torch.from_numpy(np.asarray(spec.mean, dtype=np.float32)).to(device)[:, None, None]
    inverse_std = torch.from_numpy(1.0 / np.asarray(spec.std, dtype=np.float32)).to(device)[:, None, None]
    batch.sub_(mean).mul_(inverse_std)
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
    return batch
