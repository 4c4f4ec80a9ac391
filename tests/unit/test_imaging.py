"""Decoding odd images to RGB: transparency keys and float images."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from core.imaging import decode_image


def _png(image: Image.Image, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **params)
    return buffer.getvalue()


def test_a_transparent_key_colour_becomes_white_like_alpha_does():
    pixels = np.full((8, 8, 3), 90, dtype=np.uint8)
    pixels[:4] = 0  # the key colour: transparent
    rgb = decode_image(_png(Image.fromarray(pixels), transparency=(0, 0, 0)), 10**6)
    assert np.asarray(rgb)[:4].min() == 255 and np.asarray(rgb)[4:].max() == 90
    grey = decode_image(_png(Image.fromarray(pixels[..., 0], "L"), transparency=0), 10**6)
    assert np.asarray(grey)[:4].min() == 255 and np.asarray(grey)[4:].max() == 90


def test_float_images_in_zero_to_one_keep_their_brightness():
    values = np.full((6, 6), 0.8, dtype=np.float32)
    buffer = io.BytesIO()
    Image.fromarray(values, "F").save(buffer, "TIFF")
    decoded = np.asarray(decode_image(buffer.getvalue(), 10**6))
    assert decoded.shape == (6, 6, 3) and np.all(decoded == 204)
