"""The PNG writer: images decode back exactly, whether deflated whole or in parallel strips."""

from __future__ import annotations

import os
import threading
import zlib

import numpy as np
import pytest

from core.parallel import parallel_map, workers
from core.png import adler32_combine, encode_png, zlib_stream
from support import decode_png


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (300, 451), (300, 451, 3), (1200, 800, 3), (1500, 1000), (2, 3, 3)])
def test_round_trip_is_exact(shape):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
    pixels[: shape[0] // 2] //= 7  # a smooth part and a noisy part
    assert np.array_equal(decode_png(encode_png(pixels)), pixels)


@pytest.mark.parametrize("strips", [1, 2, 3, 8])
def test_strips_make_one_valid_zlib_stream(strips):
    data = os.urandom(50_000) + bytes(200_000) + os.urandom(3)
    assert zlib.decompress(zlib_stream(data, strips)) == data


def test_adler32_combine_matches_zlib():
    first, second = os.urandom(70_001), os.urandom(123_457)
    assert adler32_combine(zlib.adler32(first), zlib.adler32(second), len(second)) == zlib.adler32(first + second)
    assert adler32_combine(zlib.adler32(b""), zlib.adler32(second), len(second)) == zlib.adler32(second)


def test_encoding_inside_the_pool_does_not_wait_on_the_pool():
    """Images big enough to be deflated in strips, more of them than pool threads: pool threads
    that waited on strips queued behind them would deadlock."""
    images = [np.full((1000, 1000, 3), value, dtype=np.uint8) for value in range(5)]
    assert workers() > 1 or os.cpu_count() == 1
    done: list[list[bytes]] = []
    runner = threading.Thread(target=lambda: done.append(parallel_map(encode_png, images)), daemon=True)
    runner.start()
    runner.join(timeout=60)
    assert done, "parallel_map of encode_png did not finish"
    assert [int(decode_png(png)[0, 0, 0]) for png in done[0]] == list(range(5))
    assert parallel_map(lambda _: workers(), range(4)) == [1] * 4


def test_refuses_other_dtypes_and_shapes():
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(ValueError):
        encode_png(np.zeros((4,), dtype=np.uint8))
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4, 4), dtype=np.uint8))


def test_compact_pngs_hold_the_same_pixels_in_fewer_bytes():
    """A smooth map like an upsampled heatmap, with the rounding noise that makes it costly."""
    y, x = np.mgrid[0:512, 0:512]
    heat = np.clip(127.5 + 127.5 * np.sin(x / 61.0) * np.cos(y / 47.0) + 0.5, 0, 255).astype(np.uint8)
    fast, compact = encode_png(heat), encode_png(heat, compact=True)
    assert np.array_equal(decode_png(compact), heat) and np.array_equal(decode_png(fast), heat)
    assert len(compact) < 0.9 * len(fast)
