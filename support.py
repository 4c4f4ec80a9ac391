"""What the tests and the benchmarks share (neither imports the other): real photos from
installed packages, synthetic images and data sets, multipart bodies, pointing-game scoring."""

from __future__ import annotations

import base64
import importlib.util
import io
import struct
import uuid
import zlib
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


def with_last_scan_repeated(jpeg: bytes, times: int) -> bytes:
    """A progressive JPEG whose last scan comes `times` more times: each copy is one more pass
    over the whole image when it is decoded."""
    last, end = jpeg.rfind(b"\xff\xda"), jpeg.rfind(b"\xff\xd9")
    return jpeg[:end] + jpeg[last:end] * times + jpeg[end:]


def upload(blob: bytes, name: str = "image.jpg", content_type: str = "image/jpeg") -> tuple:
    return ("file", (name, blob, content_type))


def multipart(files: list[tuple[str, bytes]], fields: dict[str, object] | None = None,
              boundary: str | None = None, file_field: str = "file") -> tuple[bytes, str]:
    boundary = boundary or uuid.uuid4().hex
    parts = []
    for name, value in (fields or {}).items():
        for item in value if isinstance(value, list) else [value]:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{item}\r\n'.encode())
    for filename, blob in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{filename}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + blob + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_with_empty_chunks(before_data: int, after_data: int = 0) -> bytes:
    """A 1 x 1 PNG with `before_data` and `after_data` empty ancillary chunks around its pixels."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
    pixels = png_chunk(b"IDAT", zlib.compress(b"\x00\x00\x00\x00"))
    return (b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"abCd", b"") * before_data + pixels
            + png_chunk(b"abCd", b"") * after_data + png_chunk(b"IEND", b""))


def png_size(blob: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(blob)).size


def decode_png(blob: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(blob)))


def decode_picture(blob: bytes, image_format: str) -> np.ndarray:
    """An image file's pixels, checking that it is in `image_format` (PNG, JPEG or WEBP)."""
    image = Image.open(io.BytesIO(blob))
    assert image.format == image_format.upper(), f"{image.format} where {image_format} was expected"
    return np.asarray(image)


POINTING_GAME_BACKGROUNDS = ("plain", "noise")


def pointing_game_cases(seed: int = 0, size: int = 448, object_fraction: tuple[float, float] = (1 / 3, 1 / 2.5),
                        input_size: int = 224, resize_margin: int = 32):
    """Pointing-game composites: each foolbox ImageNet photo pasted at a random place on a square canvas.

    Yields 40 (composite RGB image, object box (left, top, right, bottom) in composite pixels, label):
    first the 20 photos (in `foolbox_imagenet_photos()` order) on a plain background of a random colour
    (each channel uniform in 48..207), then the same 20 photos on Gaussian noise (mean 128, std 48 per
    pixel and channel, clipped to 0..255). Each photo is resized (aspect kept) so its long side is a random
    fraction in `object_fraction` of the canvas, and placed at a random position fully inside the centre
    crop the model sees (short side resized to input_size + resize_margin, centre crop input_size, as
    core.imaging.crop_box computes). Everything comes from one numpy Generator(seed): deterministic.
    """
    rng = np.random.default_rng(seed)
    side = size * input_size / (input_size + resize_margin)
    low, high = int(np.ceil((size - side) / 2)), int(np.floor((size + side) / 2))  # integer box inside the crop
    photos = [(Image.open(path).convert("RGB"), label) for path, label in foolbox_imagenet_photos()]
    for background in POINTING_GAME_BACKGROUNDS:
        for photo, label in photos:
            if background == "plain":
                colour = tuple(int(c) for c in rng.integers(48, 208, size=3))
                canvas = Image.new("RGB", (size, size), colour)
            else:
                noise = rng.normal(128.0, 48.0, size=(size, size, 3))
                canvas = Image.fromarray(np.clip(noise + 0.5, 0, 255).astype(np.uint8), "RGB")
            long_side = int(round(size * rng.uniform(*object_fraction)))
            scale = long_side / max(photo.size)
            width, height = max(1, round(photo.width * scale)), max(1, round(photo.height * scale))
            left = int(rng.integers(low, high - width + 1))
            top = int(rng.integers(low, high - height + 1))
            canvas.paste(photo.resize((width, height), Image.Resampling.LANCZOS), (left, top))
            yield canvas, (left, top, left + width, top + height), label


def heatmap_peak(heatmap: np.ndarray) -> tuple[float, float]:
    """(x, y) of a heatmap's maximum; where several pixels tie at the maximum, their centroid."""
    ys, xs = np.nonzero(heatmap == heatmap.max())
    return float(xs.mean()), float(ys.mean())


def point_in_box(point: tuple[float, float], box: tuple[int, int, int, int], tolerance: float = 0.0) -> bool:
    """Whether pixel (x, y) lies in box (left, top, right, bottom; right/bottom exclusive), widened by
    `tolerance` pixels on every side."""
    x, y = point
    left, top, right, bottom = box
    return left - tolerance <= x <= right - 1 + tolerance and top - tolerance <= y <= bottom - 1 + tolerance


POINTING_TOLERANCE = 15  # pixels on every side of the object's box, as in Zhang et al. 2016


def pointing_hit(heatmap_png_base64: str, box: tuple[int, int, int, int]) -> tuple[bool, bool]:
    """The pointing game's scoring of one heatmap: (peak within POINTING_TOLERANCE of the box,
    peak strictly inside it)."""
    peak = heatmap_peak(decode_png(base64.b64decode(heatmap_png_base64)))
    return point_in_box(peak, box, POINTING_TOLERANCE), point_in_box(peak, box)


SHAPE_CLASSES = ("disc", "square", "triangle")


def shape_image(kind: str, rng: np.random.Generator, size: int = 96) -> Image.Image:
    """A noisy background with one coloured shape of `kind`, at a random place and size."""
    from PIL import ImageDraw

    background = rng.integers(90, 170, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    extent = int(rng.integers(size // 3, size // 2))
    left, top = (int(v) for v in rng.integers(4, size - extent - 4, 2))
    colour = {"disc": (220, 40, 40), "square": (40, 60, 220), "triangle": (40, 200, 60)}[kind]
    box = (left, top, left + extent, top + extent)
    if kind == "disc":
        draw.ellipse(box, fill=colour)
    elif kind == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(left, top + extent), (left + extent, top + extent), (left + extent // 2, top)], fill=colour)
    return image


def shapes_archive(per_class: int = 10, seed: int = 0, fmt: str = "zip", size: int = 96) -> bytes:
    """A data set archive, one folder per class, of generated shape photos."""
    import tarfile
    import zipfile

    rng = np.random.default_rng(seed)
    files = {f"{kind}/{index:03d}.png": encode(shape_image(kind, rng, size), "PNG")
             for kind in SHAPE_CLASSES for index in range(per_class)}
    buffer = io.BytesIO()
    if fmt == "zip":
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, blob in files.items():
                archive.writestr(name, blob)
    else:
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            for name, blob in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                archive.addfile(info, io.BytesIO(blob))
    return buffer.getvalue()


def classes_archive(classes: int) -> bytes:
    """A zip of `classes` class folders of two 8x8 PNGs each: 10,000 of them zip to 3.4 MB."""
    import zipfile

    tiny = encode(chelsea().resize((8, 8)), "PNG")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for index in range(classes):
            for copy in range(2):
                archive.writestr(f"c{index:05d}/{copy}.png", tiny)
    return buffer.getvalue()


EVIDENCE_COLOURS = {"disc": (220, 40, 40), "square": (40, 60, 220), "triangle": (40, 200, 60)}


def evidence_left_image(kind: str, rng: np.random.Generator, size: int = 160,
                        input_size: int = 128) -> tuple[Image.Image, int]:
    """Noise with the class's shape somewhere in the left half of the model's centre crop (short
    side to input_size + 32, crop input_size) and a distractor shape of a uniformly random class
    (independent of the label) somewhere in the right half: only the left half tells the classes
    apart. Returns the image and the x where the right half starts."""
    from PIL import ImageDraw

    crop = size * input_size / (input_size + 32)
    low, high = int(np.ceil((size - crop) / 2)) + 2, int((size + crop) / 2) - 2
    middle = int(round(size / 2))
    image = Image.fromarray(rng.integers(90, 170, (size, size, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    for shape, (x_low, x_high) in ((kind, (low, middle - 2)),
                                   (SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))], (middle + 2, high))):
        extent = int(rng.integers(int(crop * 0.22), int(crop * 0.35)))
        left, top = int(rng.integers(x_low, x_high - extent + 1)), int(rng.integers(low, high - extent + 1))
        box, colour = (left, top, left + extent, top + extent), EVIDENCE_COLOURS[shape]
        if shape == "disc":
            draw.ellipse(box, fill=colour)
        elif shape == "square":
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([(left, top + extent), (left + extent, top + extent), (left + extent // 2, top)], fill=colour)
    return image, middle


def evidence_left_archive(per_class: int, seed: int, size: int = 160, input_size: int = 128) -> bytes:
    """A zip data set of `evidence_left_image`s, one folder per shape class."""
    import zipfile

    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for kind in SHAPE_CLASSES:
            for index in range(per_class):
                archive.writestr(f"{kind}/{index:03d}.png",
                                 encode(evidence_left_image(kind, rng, size, input_size)[0], "PNG"))
    return buffer.getvalue()
