"""Predict's decoding and preprocessing on the model's device, run here on the CPU (torchvision's
libjpeg-turbo, the same decoder as Pillow's): the model's input within a few pixel levels of the
served CPU preprocessing, the same predictions, and only the uploads it decodes as Pillow would.
tests/gpu checks nvJPEG on CUDA."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from core import device_preprocessing, imaging
from core.errors import InvalidRequest
from core.models.catalog import builtin_spec, load_builtin
from core.models.onnx_export import ensure_onnx
from core.pipeline import softmax
from core.runtime.onnx_predictor import OnnxPredictor
from support import chelsea, coffee, encode, foolbox_imagenet_photos, with_last_scan_repeated

CPU = torch.device("cpu")
LITE0 = builtin_spec("efficientnet_lite0")
SPECS = {"lite0 (bicubic, crop box)": LITE0,
         "bilinear, 160 + 23": replace(LITE0, interpolation="bilinear", input_size=160, resize_margin=23),
         "torchvision's resize": replace(LITE0, interpolation="bilinear", torchvision_resize=True)}


@pytest.fixture(scope="module")
def uploads() -> list[bytes]:
    """The 20 progressive 512 x 512 photos, and baseline ones of other shapes, colour and grey."""
    photos = [path.read_bytes() for path, _ in foolbox_imagenet_photos()]
    shaped = [encode(chelsea().resize(size), quality=90) for size in [(451, 300), (300, 451), (1500, 1000), (233, 1201)]]
    return photos + shaped + [encode(coffee()), encode(chelsea().convert("L"))]


@pytest.fixture(scope="module")
def lite0_predictor(tmp_path_factory) -> OnnxPredictor:
    spec, network = load_builtin("efficientnet_lite0")
    return OnnxPredictor(ensure_onnx(network, spec, tmp_path_factory.mktemp("onnx")))


def levels(device_batch: torch.Tensor, cpu_batch: np.ndarray, spec) -> np.ndarray:
    """|difference| in 0-255 pixel levels."""
    return np.abs(device_batch.numpy() - cpu_batch) * np.asarray(spec.std, dtype=np.float32)[:, None, None]


@pytest.mark.parametrize("resize", ["crop", "stretch"])
@pytest.mark.parametrize("name", list(SPECS))
def test_the_input_is_the_served_preprocessing_within_a_few_levels(uploads, name, resize):
    """Pillow runs its two passes in either order, rounding between them, and has its own
    reducing_gap for large reductions: a pixel here and there differs by a few levels."""
    spec = SPECS[name]
    assert device_preprocessing.decodable(uploads, 10**8, 10**9)
    on_device = device_preprocessing.preprocess(uploads, spec, resize, CPU)
    served, _ = imaging.preprocess([imaging.decode_image(blob, 10**8, imaging.needed_sides(spec)) for blob in uploads],
                                   spec, resize)
    assert on_device.shape == served.shape and on_device.dtype == torch.float32
    difference = levels(on_device, served, spec)
    assert difference.mean() < 0.1, difference.mean()
    assert difference.max() <= 8, difference.reshape(len(uploads), -1).max(axis=1)


def test_the_model_predicts_the_same(uploads, lite0_predictor):
    on_device = device_preprocessing.preprocess(uploads, LITE0, "crop", CPU)
    served, _ = imaging.preprocess([imaging.decode_image(blob, 10**8, imaging.needed_sides(LITE0)) for blob in uploads],
                                   LITE0)
    ours, theirs = softmax(lite0_predictor.logits(on_device)), softmax(lite0_predictor.logits(served))
    assert (ours.argmax(axis=1) == theirs.argmax(axis=1)).all()
    assert np.abs(ours - theirs).max() < 0.01


def test_batches_of_tensors_and_arrays_run_together(uploads, lite0_predictor):
    tensors = device_preprocessing.preprocess(uploads[:3], LITE0, "crop", CPU)
    arrays, _ = imaging.preprocess([imaging.decode_image(blob, 10**8) for blob in uploads[3:5]], LITE0)
    mixed = lite0_predictor.run_batches(("logits",), [tensors, arrays])
    alone = lite0_predictor.run_batches(("logits",), [tensors.numpy(), arrays])
    assert [part[0].shape[0] for part in mixed] == [3, 2]
    for ours, theirs in zip(mixed, alone):
        np.testing.assert_allclose(ours[0], theirs[0], atol=1e-4)


def test_resample_weights_are_pillows_resize():
    pixels = np.asarray(chelsea())[:, :, 0]
    for interpolation, box, size in [("bicubic", (30.5, 0, 410.25, 300), 97), ("bilinear", (0, 12.75, 451, 280), 150),
                                     ("bicubic", (0, 0, 451, 300), 600)]:
        left, top, right, bottom = box
        columns = imaging.resample_weights(451, size, interpolation, left, right, fixed_point=True)
        across = np.floor(pixels @ columns.T.astype(np.float64) + 0.5).clip(0, 255)
        rows = imaging.resample_weights(300, 1, interpolation, top, bottom, fixed_point=True)  # one row: no 2nd rounding
        column_pass = Image.fromarray(pixels).resize((size, 300), getattr(Image.Resampling, interpolation.upper()),
                                                     box=(left, 0, right, 300))
        assert np.abs(across - np.asarray(column_pass)).max() <= 1
        assert rows.shape == (1, 300) and abs(rows.sum() - 1) < 1e-5


def test_only_what_it_decodes_as_pillow_would_is_taken():
    photo = encode(chelsea())
    rotated = chelsea().getexif()
    rotated[0x0112] = 6
    assert device_preprocessing.decodable([photo, encode(chelsea().convert("L"))], 10**6, 10**6)
    assert device_preprocessing.decodable([encode(Image.new("RGB", (1400, 1400)), progressive=True)], 10**7, 10**7)
    refused = {
        "a PNG": [encode(chelsea(), "PNG")],
        "a CMYK JPEG": [encode(chelsea().convert("CMYK"))],
        "an EXIF rotation": [encode(chelsea(), exif=rotated.tobytes())],
        "too many scans": [with_last_scan_repeated(encode(chelsea(), progressive=True), imaging.MAX_JPEG_SCANS)],
        "not an image": [b"\xff\xd8\xff" + b"\x00" * 100],
        "one of two files over the pixel limit": [photo, encode(chelsea().resize((1001, 1000)))],
        "a side over 4096": [encode(Image.new("RGB", (4097, 8)))],
        "a progressive one over 2 megapixels": [encode(Image.new("RGB", (1500, 1500)), progressive=True)],
    }
    for why, blobs in refused.items():
        assert not device_preprocessing.decodable(blobs, 10**6, 10**7), why
    assert not device_preprocessing.decodable([photo] * 8, 10**6, 7 * 451 * 300), "the request's pixels together"
    large = encode(Image.new("RGB", (4096, 4097)))
    assert not device_preprocessing.decodable([large], 10**8, 10**8), "decoded at a reduced scale on the CPU"


def test_a_damaged_jpeg_is_refused_by_the_decoder_so_the_cpu_path_answers():
    photo = encode(chelsea())
    with pytest.raises(RuntimeError):
        device_preprocessing.preprocess([photo[: len(photo) // 2]], LITE0, "crop", CPU)
    with pytest.raises(InvalidRequest):
        device_preprocessing.preprocess([photo], LITE0, "sideways", CPU)
