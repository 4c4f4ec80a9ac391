"""Phone-sized photos (4032x3024 JPEGs): a JPEG decoded at a smaller scale (what the service
does: core.imaging.needed_sides) against the whole photo decoded, for decoding, an in-process
predict and a default `cam` explanation (its pictures and their bytes), and how far the answers
move; and preprocessing with Pillow's reducing_gap (what core.imaging does) against one plain
bicubic resize.

  python -m bench.large_photos
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from bench.common import interleaved, report, run_timed, served_model
from core import imaging, pipeline
from support import encode, foolbox_imagenet_photos

SIZE = (4032, 3024)


def phone_sized(path) -> bytes:
    """A foolbox photo upscaled to SIZE, with a little noise so that it compresses like a photo."""
    photo = Image.open(path).convert("RGB").resize(SIZE, Image.Resampling.BICUBIC)
    noise = np.random.default_rng(0).integers(-4, 5, (SIZE[1], SIZE[0], 3))
    return encode(Image.fromarray(np.clip(np.asarray(photo, np.int16) + noise, 0, 255).astype(np.uint8)), quality=90)


def main() -> None:
    model = served_model()
    spec = model.spec
    sides = imaging.needed_sides(spec)
    blobs = [phone_sized(path) for path, _ in foolbox_imagenet_photos()]
    blob = blobs[0]

    def explained(smaller: bool) -> int:
        image = imaging.decode_image(blob, 10**9, sides if smaller else None)
        result = pipeline.explain(model, [image], "cam", None, None, {}, 5, ("heatmap", "overlay"))[0]
        return len(result.explanation.heatmap_png) + len(result.explanation.overlay)

    times = interleaved({
        "decode whole": lambda: imaging.decode_image(blob, 10**9),
        "decode smaller": lambda: imaging.decode_image(blob, 10**9, sides),
        "predict whole": lambda: pipeline.predict(model, [imaging.decode_image(blob, 10**9)]),
        "predict smaller": lambda: pipeline.predict(model, [imaging.decode_image(blob, 10**9, sides)]),
        "cam whole": lambda: explained(False),
        "cam smaller": lambda: explained(True),
    }, rounds=5, per_round=3)

    agree, moved = 0, []
    for one in blobs:
        whole, smaller = (pipeline.predict(model, [imaging.decode_image(one, 10**9, at_least)])[0].predictions
                          for at_least in (None, sides))
        agree += whole[0].index == smaller[0].index
        moved.append(abs(whole[0].probability - smaller[0].probability))

    photo = imaging.decode_image(blob, 10**9)
    box = imaging.crop_box(photo.width, photo.height, spec)
    corners = (box.left, box.top, box.right, box.bottom)

    def plain_resize() -> np.ndarray:
        return np.asarray(photo.resize((spec.input_size,) * 2, Image.Resampling.BICUBIC, box=corners))

    shipped = imaging.preprocess([photo], spec)[0][0]
    plain = (plain_resize().astype(np.float32).transpose(2, 0, 1) - np.float32(spec.mean[0])) / np.float32(spec.std[0])
    resizing = interleaved({"shipped": lambda: imaging.preprocess([photo], spec), "plain": plain_resize},
                           rounds=5, per_round=5)
    smaller_size = imaging.decode_image(blob, 10**9, sides).size
    report(f"{SIZE[0]}x{SIZE[1]} JPEG, EfficientNet-Lite0 (median ms, side by side)", [
        (f"decode whole / at {smaller_size[0]}x{smaller_size[1]}",
         f"{times['decode whole']:.1f} / {times['decode smaller']:.1f} ({times.ratio('decode smaller', 'decode whole'):.2f}x)"),
        ("in-process predict, whole / smaller",
         f"{times['predict whole']:.1f} / {times['predict smaller']:.1f} ({times.ratio('predict smaller', 'predict whole'):.2f}x)"),
        ("in-process cam with its pictures, whole / smaller",
         f"{times['cam whole']:.1f} / {times['cam smaller']:.1f} ({times.ratio('cam smaller', 'cam whole'):.2f}x)"),
        ("cam's pictures, bytes, whole / smaller", f"{explained(False)} / {explained(True)}"),
        (f"top-1 the same, {len(blobs)} photos", f"{agree}/{len(blobs)}"),
        ("top-1 probability moved, median / largest", f"{np.median(moved):.4f} / {max(moved):.4f}"),
        ("preprocess (reducing_gap=3) / one plain bicubic resize",
         f"{resizing['shipped']:.1f} / {resizing['plain']:.1f} ({resizing.ratio('plain', 'shipped'):.2f}x)"),
        ("largest input difference of those two, in pixel levels", f"{np.abs(shipped - plain).max() * spec.std[0]:.2f}"),
    ])


if __name__ == "__main__":
    run_timed(main)
