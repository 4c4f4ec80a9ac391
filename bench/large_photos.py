"""A phone-sized photo (4032x2682 JPEG): preprocessing with Pillow's reducing_gap (what
core.imaging does) vs one plain bicubic resize, and what a whole in-process predict costs.

  python -m bench.large_photos
"""

from __future__ import annotations


import numpy as np
from PIL import Image

from bench.common import interleaved, report, run_timed, served_model
from core import imaging, pipeline
from support import chelsea, encode


def main() -> None:
    model = served_model()
    spec = model.spec
    blob = encode(chelsea().resize((4032, 2682), Image.Resampling.BICUBIC))
    photo = imaging.decode_image(blob, 10**9)
    box = imaging.crop_box(photo.width, photo.height, spec)
    corners = (box.left, box.top, box.right, box.bottom)

    def plain_resize() -> np.ndarray:
        return np.asarray(photo.resize((spec.input_size,) * 2, Image.Resampling.BICUBIC, box=corners))

    shipped = imaging.preprocess([photo], spec)[0][0]
    plain = (plain_resize().astype(np.float32).transpose(2, 0, 1) - np.float32(spec.mean[0])) / np.float32(spec.std[0])
    times = interleaved({
        "shipped": lambda: imaging.preprocess([photo], spec),
        "plain": plain_resize,
        "decode": lambda: imaging.decode_image(blob, 10**9),
        "predict": lambda: pipeline.predict(model, [imaging.decode_image(blob, 10**9)]),
    }, rounds=5, per_round=5)
    report("4032x2682 JPEG, EfficientNet-Lite0 (median ms)", [
        ("preprocess (reducing_gap=3)", f"{times['shipped']:.1f}"),
        ("one plain bicubic resize", f"{times['plain']:.1f}"),
        ("plain / shipped", f"{times.ratio('plain', 'shipped'):.2f}x"),
        ("largest input difference, in pixel levels", f"{np.abs(shipped - plain).max() * spec.std[0]:.2f}"),
        ("decode", f"{times['decode']:.1f}"),
        ("decode + preprocess + ORT (in-process predict)", f"{times['predict']:.1f}"),
    ])


if __name__ == "__main__":
    run_timed(main)
