"""Decoding odd images to RGB (transparency keys, float images) and preprocessing."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from core.errors import GazerError, ImageTooLarge, InvalidImage
from core.imaging import (JET, MAX_JPEG_SCANS, CropBox, crop_box, declared_pixels, decode_image, decode_images,
                          needed_sides, overlay, preprocess, resize_map)
from core.models.catalog import builtin_spec
from core.names import PICTURE_SIDE
from support import chelsea, encode, foolbox_imagenet_photos, with_last_scan_repeated


def test_a_transparent_key_colour_becomes_white_like_alpha_does():
    pixels = np.full((8, 8, 3), 90, dtype=np.uint8)
    pixels[:4] = 0  # the key colour: transparent
    rgb = decode_image(encode(Image.fromarray(pixels), "PNG", transparency=(0, 0, 0)), 10**6)
    assert np.asarray(rgb)[:4].min() == 255 and np.asarray(rgb)[4:].max() == 90
    grey = decode_image(encode(Image.fromarray(pixels[..., 0], "L"), "PNG", transparency=0), 10**6)
    assert np.asarray(grey)[:4].min() == 255 and np.asarray(grey)[4:].max() == 90
    # a 16-bit grey key: it was dropped with the 16 bits, so its pixels were black
    deep = decode_image(encode(Image.fromarray(pixels[..., 0].astype(np.uint16) * 257), "PNG", transparency=0), 10**6)
    assert np.asarray(deep)[:4].min() == 255 and np.asarray(deep)[4:].max() == 90


def test_a_premultiplied_grey_tiff_is_read_and_a_mode_pillow_cannot_convert_is_a_422():
    """Grey with associated alpha (TIFF ExtraSamples 1) opens as "La", which Pillow converts only
    to LA: a 500 on predict and explain."""
    pixels = np.stack([np.full((8, 8), 45, dtype=np.uint8), np.full((8, 8), 128, dtype=np.uint8)], axis=-1)
    pixels[:4, :, 1] = 255
    unassociated = encode(Image.fromarray(pixels, "LA"), "TIFF")
    extra_samples = b"\x52\x01\x03\x00\x01\x00\x00\x00"  # tag 338, SHORT, one value: 2 (unassociated)
    associated = unassociated.replace(extra_samples + b"\x02\x00", extra_samples + b"\x01\x00")
    assert Image.open(io.BytesIO(associated)).mode == "La"
    decoded = np.asarray(decode_image(associated, 10**6))
    assert decoded.shape == (8, 8, 3) and np.all(decoded[:4] == 45)  # opaque
    assert np.all(np.abs(decoded[4:].astype(int) - (90 * 128 + 255 * 127) // 255) <= 2)  # 45 premultiplied at 128


def test_a_colour_mode_that_cannot_become_rgb_is_a_422(monkeypatch):
    def refuse(image, *args, **kwargs):
        raise ValueError(f"conversion from {image.mode} to RGB not supported")

    monkeypatch.setattr(Image.Image, "convert", refuse)
    with pytest.raises(InvalidImage, match="colour mode L cannot be read as RGB") as refused:
        decode_image(encode(Image.fromarray(np.zeros((8, 8), dtype=np.uint8), "L"), "PNG"), 10**6)
    assert refused.value.status == 422


def test_float_images_in_zero_to_one_keep_their_brightness():
    values = np.full((6, 6), 0.8, dtype=np.float32)
    decoded = np.asarray(decode_image(encode(Image.fromarray(values, "F"), "TIFF"), 10**6))
    assert decoded.shape == (6, 6, 3) and np.all(decoded == 204)


def test_a_jpeg_with_too_many_scans_is_refused_before_decoding():
    """Every scan is one more pass over the image; real progressive JPEGs have about ten."""
    progressive = encode(chelsea(), progressive=True)
    assert progressive.count(b"\xff\xda") == 10
    at_the_limit = with_last_scan_repeated(progressive, MAX_JPEG_SCANS - 10)
    assert decode_image(at_the_limit, 10**6).size == (451, 300)
    crafted = with_last_scan_repeated(progressive, MAX_JPEG_SCANS - 9)
    Image.open(io.BytesIO(crafted)).load()  # a JPEG Pillow decodes: the limit, not damage, refuses it
    with pytest.raises(InvalidImage, match=f"has {MAX_JPEG_SCANS + 1} scans; the limit is {MAX_JPEG_SCANS}") as refused:
        decode_image(crafted, 10**6)
    assert refused.value.status == 422


def test_real_progressive_photos_are_within_the_scan_limit():
    for path, _ in foolbox_imagenet_photos():
        blob = path.read_bytes()
        assert blob.count(b"\xff\xda") >= 7  # progressive, every one
        assert decode_image(blob, 10**7).mode == "RGB"
    assert decode_image(encode(chelsea().convert("L"), progressive=True), 10**6).size == (451, 300)


def test_preprocess_normalizes_the_centre_crop_channel_first():
    spec = builtin_spec("efficientnet_lite0")
    image = chelsea()
    batch, boxes = preprocess([image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)], spec)
    box = crop_box(image.width, image.height, spec)
    assert boxes[0] == box and batch.shape == (2, 3, 224, 224) and batch.dtype == np.float32
    crop = np.asarray(image.resize((224, 224), Image.Resampling.BICUBIC,
                                   box=(box.left, box.top, box.right, box.bottom)), dtype=np.float32)
    expected = ((crop - np.float32(127.0)) / np.float32(128.0)).transpose(2, 0, 1)
    assert np.array_equal(batch[0], expected)
    assert np.array_equal(batch[1], expected[:, :, ::-1])  # the flipped photo's crop, flipped back


@pytest.mark.filterwarnings("ignore:.*:UserWarning")  # Pillow warns about the damaged tags it skips
@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "PNG"])
def test_damaged_exif_and_bytes_give_an_image_or_a_clear_error(fmt):
    """Seeded byte flips near the EXIF block (Pillow raises struct.error, TypeError or
    AttributeError for some of them): every upload decodes or is refused as invalid or too large
    (any other exception fails the test), and the flips exercise both outcomes."""
    exif = Image.Exif()
    exif[0x0112], exif[0x011A], exif[0x011B], exif[0x0131] = 3, (72, 1), (72, 1), "gazer"
    blob = encode(chelsea().resize((64, 43)), fmt, exif=exif.tobytes())
    start = blob.find(b"Exif")
    rng = np.random.default_rng(1)
    decoded = refused = 0
    for _ in range(1500):
        data = bytearray(blob)
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(start, min(len(data), start + 200)))] = int(rng.integers(0, 256))
        try:
            image = decode_image(bytes(data), 10**7)
        except (InvalidImage, ImageTooLarge):
            refused += 1
        else:
            assert image.mode == "RGB" and image.size in ((64, 43), (43, 64))
            decoded += 1
    assert decoded > 0 and refused > 0


def test_an_oversized_image_among_several_gets_its_own_error():
    flat, small = encode(Image.new("RGB", (500, 400)), "PNG"), encode(Image.new("RGB", (10, 10)), "PNG")
    with pytest.raises(GazerError) as refused:
        decode_images([small, flat], max_pixels=100_000, max_total_pixels=10**9)
    assert refused.value.detail == "file 1: image is 500x400 = 200000 pixels; the limit is 100000"
    with pytest.raises(GazerError) as refused:
        decode_images([small, flat], max_pixels=10**6, max_total_pixels=150_000)
    assert "images declare 200100 pixels together" in refused.value.detail


def test_the_torchvision_convention_is_torchvisions_resize_and_centre_crop():
    from dataclasses import replace

    from torchvision import transforms

    spec = replace(builtin_spec("efficientnet_lite0"), input_size=160, resize_margin=23, interpolation="bilinear",
                   mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), torchvision_resize=True)
    reference = transforms.Compose([transforms.Resize(183), transforms.CenterCrop(160), transforms.ToTensor(),
                                    transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    for image in (chelsea(), chelsea().rotate(90, expand=True), chelsea().resize((301, 203))):
        batch, _ = preprocess([image], spec)
        assert np.abs(batch[0] - reference(image).numpy()).max() < 1e-5


@pytest.mark.parametrize("blob", [
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n{} loop\n",  # would run Ghostscript forever
    b"%!PS\n{} loop\n",
])
def test_postscript_is_refused_without_running_anything(blob, monkeypatch):
    import subprocess

    def no_programs(*args, **kwargs):
        raise AssertionError("an external program was started")

    monkeypatch.setattr(subprocess, "Popen", no_programs)
    monkeypatch.setattr(subprocess, "check_call", no_programs)
    with pytest.raises(GazerError) as refused:
        decode_image(blob, 10**6)
    assert refused.value.status == 422 and "JPEG" in refused.value.detail


@pytest.mark.parametrize("source, size", [((7, 7), (448, 448)), ((7, 7), (300, 451)), ((14, 14), (1000, 1500)),
                                          ((7, 7), (1, 3)), ((1, 1), (5, 5)), ((32, 20), (9, 700)),
                                          ((33, 33), (500, 40)), ((224, 224), (100, 150))])
def test_a_map_is_resized_as_pillow_resizes_a_float_image(source, size):
    saliency = np.random.default_rng(0).random(source, dtype=np.float32)
    expected = np.asarray(Image.fromarray(saliency, "F").resize(size[::-1], Image.Resampling.BILINEAR))
    resized = resize_map(saliency, size[1], size[0])
    assert resized.shape == size and resized.dtype == np.float32
    np.testing.assert_allclose(resized, expected, atol=1e-6)


def test_the_overlay_is_half_photo_half_jet_colour_inside_the_crop_box_and_the_photo_outside():
    photo = chelsea()
    pixels = np.asarray(photo)
    heat = np.random.default_rng(0).integers(0, 256, pixels.shape[:2], dtype=np.uint8)
    left, top, right, bottom = 37, 5, 290, 250
    blended = overlay(photo, heat, CropBox(left, top, right, bottom))
    expected = pixels.copy()
    expected[top:bottom, left:right] = (pixels[top:bottom, left:right] >> 1) + (JET[heat[top:bottom, left:right]] >> 1)
    assert blended.dtype == np.uint8 and np.array_equal(blended, expected)


def test_a_large_jpeg_decodes_at_the_smallest_scale_that_keeps_what_the_model_and_the_pictures_need():
    spec = builtin_spec("efficientnet_lite0")
    shorter, longer = needed_sides(spec)
    assert shorter == 2 * (spec.input_size + spec.resize_margin) and longer == PICTURE_SIDE
    photo = chelsea().resize((4032, 3024), Image.Resampling.BICUBIC)
    assert decode_image(encode(photo), 10**8, (shorter, longer)).size == (1008, 756)  # 1/4
    assert decode_image(encode(photo.transpose(Image.Transpose.ROTATE_90)), 10**8, (shorter, longer)).size == (756, 1008)
    assert decode_image(encode(photo.resize((2400, 1800))), 10**8, (shorter, longer)).size == (1200, 900)  # 1/2
    assert decode_image(encode(photo.resize((1500, 1000))), 10**8, (shorter, longer)).size == (1500, 1000)
    assert decode_image(encode(photo), 10**8).size == (4032, 3024)  # asked for nothing: the whole image
    png = encode(photo, "PNG")  # decoded whole, then shrunk as a JPEG would be decoded
    assert decode_image(png, 10**8, (shorter, longer)).size == (1008, 756)
    assert declared_pixels(png) == (4032 * 3024,) * 2 and declared_pixels(png, (shorter, longer)) == (4032 * 3024, 1008 * 756)


def test_the_model_input_of_a_jpeg_decoded_smaller_moves_as_little_as_reducing_gap_moves_it():
    """Against an exact resize of the whole decoded photo, within 3 pixel levels both ways."""
    spec = builtin_spec("efficientnet_lite0")
    blob = encode(chelsea().resize((4032, 3024), Image.Resampling.BICUBIC), quality=90)
    whole = decode_image(blob, 10**8)
    smaller = decode_image(blob, 10**8, needed_sides(spec))
    inputs, boxes = preprocess([whole, smaller], spec)
    box = boxes[0]
    exact = np.asarray(whole.resize((spec.input_size,) * 2, Image.Resampling.BICUBIC,
                                    box=(box.left, box.top, box.right, box.bottom)), dtype=np.float32)
    exact = (exact.transpose(2, 0, 1) - np.asarray(spec.mean, np.float32)[:, None, None]) \
        / np.asarray(spec.std, np.float32)[:, None, None]
    levels = [np.abs(one - exact).max() * max(spec.std) for one in inputs]
    assert max(levels) <= 4, levels

