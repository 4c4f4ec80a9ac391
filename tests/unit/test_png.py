"""The PNG writer: images decode back exactly, whether deflated whole or in parallel strips."""

from __future__ import annotations

import io
import os
import zlib

import numpy as np
import pytest
from PIL import Image

from core.parallel import parallel_map
from core.png import adler32_combine, encode_png, zlib_stream


def _decoded(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    image.load()
    return np.asarray(image)


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (300, 451), (300, 451, 3), (1200, 800, 3), (1500, 1000), (2, 3, 3)])
def test_round_trip_is_exact(shape):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
    pixels[: shape[0] // 2] //= 7  # a smooth part and a noisy part
    assert np.array_equal(_decoded(encode_png(pixels)), pixels)


@pytest.mark.parametrize("strips", [1, 2, 3, 8])
def test_strips_make_one_valid_zlib_stream(strips):
    data = os.urandom(50_000) + bytes(200_000) + os.urandom(3)
    assert zlib.decompress(zlib_stream(data, strips)) == data


def test_adler32_combine_matches_zlib():
    first, second = os.urandom(70_001), os.urandom(123_457)
    assert adler32_combine(zlib.adler32(first), zlib.adler32(second), len(second)) == zlib.adler32(first + second)
    assert adler32_combine(zlib.adler32(b""), zlib.adler32(second), len(second)) == zlib.adler32(second)


def test_encoding_inside_the_pool_does_not_wait_on_the_pool():
    images = [np.full((600, 600, 3), value, dtype=np.uint8) for value in range(6)]
    pngs = parallel_map(encode_png, images)
    assert [int(_decoded(png)[0, 0, 0]) for png in pngs] == list(range(6))


def test_refuses_other_dtypes_and_shapes():
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(ValueError):
        encode_png(np.zeros((4,), dtype=np.uint8))
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4, 4), dtype=np.uint8))
