"""Files made of nothing but structure that Pillow walks in Python (empty PNG chunks, JPEG
segments and fill bytes, GIF extension blocks) are refused before it opens them; real files of
every format pass, however they were encoded."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageDraw

from core.errors import InvalidImage
from core.image_structure import allowed_units, check_structure
from core.imaging import declared_pixels, decode_image
from support import chelsea, encode, foolbox_imagenet_photos, png_chunk, png_with_empty_chunks


def tiny_jpeg() -> bytes:
    return encode(Image.new("RGB", (8, 8), (200, 30, 30)))


def gif_with_comment_blocks(blocks: int) -> bytes:
    """A 1 x 1 GIF whose comment extension holds `blocks` one-byte sub-blocks."""
    plain = encode(Image.new("P", (1, 1)), "GIF")
    image = plain.index(b"\x2c")
    return plain[:image] + b"\x21\xfe" + b"\x01a" * blocks + b"\x00" + plain[image:]


def gif_with_stray_bytes(count: int) -> bytes:
    plain = encode(Image.new("P", (1, 1)), "GIF")
    image = plain.index(b"\x2c")
    return plain[:image] + b"\x00" * count + plain[image:]


def tiff_of_one_row_strips(rows: int, kind: int = 3) -> bytes:
    """A 1 x `rows` grey TIFF, a strip per row, every strip the same byte; its strips' offsets and
    sizes of TIFF type `kind` (3: SHORT, 1: BYTE, 6: SBYTE)."""
    tags = [(256, 3, 1, 1), (257, 4, 1, rows), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
            (273, kind, rows, None), (277, 3, 1, 1), (278, 4, 1, 1), (279, kind, rows, None)]
    position, directory, arrays = 16 + 2 + 12 * len(tags) + 4, struct.pack("<H", len(tags)), []
    for tag, kind, count, value in tags:
        if value is None:
            arrays.append(struct.pack("<H" if kind == 3 else "<B", 8 if tag == 273 else 1) * count)
            directory += struct.pack("<HHII", tag, kind, count, position)
            position += len(arrays[-1])
        else:
            directory += struct.pack("<HHIHH" if kind == 3 else "<HHII", tag, kind, count, value, *([0] * (kind == 3)))
    return b"II*\x00" + struct.pack("<I", 16) + b"\x80" * 8 + directory + struct.pack("<I", 0) + b"".join(arrays)


def rle8_bmp(width: int, height: int) -> bytes:
    """A grey BMP compressed by run lengths, every pixel a run of its own."""
    pixels = b"".join(bytes(value for x in range(width) for value in (1, (x + y) % 256)) + b"\x00\x00"  # end of line
                      for y in range(height)) + b"\x00\x01"  # end of the picture
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    offset = 14 + 40 + len(palette)
    header = struct.pack("<2sIHHI", b"BM", offset + len(pixels), 0, 0, offset)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    return header + info + palette + pixels


def real_files() -> dict[str, bytes]:
    files = {path.name: path.read_bytes() for path, _ in foolbox_imagenet_photos()[:5]}
    for name in ("chelsea", "camera", "coffee"):
        image = Image.fromarray(getattr(skimage.data, name)())
        for fmt, options in (("PNG", {}), ("PNG", {"optimize": True}), ("JPEG", {}), ("JPEG", {"progressive": True}),
                             ("GIF", {}), ("WEBP", {}), ("TIFF", {}), ("BMP", {})):
            files[f"{name} {fmt} {options}"] = encode(image, fmt, **options)
    frames = [Image.fromarray(skimage.data.camera()).rotate(angle) for angle in range(0, 360, 45)]
    animated = io.BytesIO()
    frames[0].save(animated, "GIF", save_all=True, append_images=frames[1:], comment=b"x" * 20000, loop=0)
    files["animated GIF with a long comment"] = animated.getvalue()
    small = [Image.fromarray(skimage.data.camera()[:32, :32]).rotate(angle) for angle in range(1500)]
    apng = io.BytesIO()  # Pillow reads its first frame's chunks only
    small[0].save(apng, "PNG", save_all=True, append_images=small[1:])
    files["animated PNG of 1500 frames"] = apng.getvalue()
    files["JPEG with a 60 KB EXIF block"] = encode(chelsea(), exif=b"Exif\x00\x00" + b"\x00" * 60000)
    files["CMYK JPEG"] = encode(chelsea().convert("CMYK"))
    narrow = Image.fromarray(skimage.data.camera()[:, :200])
    files["TIFF of a strip per row"] = encode(narrow, "TIFF", strip_size=200)
    files["LZW TIFF"] = encode(chelsea(), "TIFF", compression="tiff_lzw")
    files["run-length BMP"] = rle8_bmp(300, 200)
    page = Image.new("1", (2480, 3508), 1)  # an A4 page scanned at 300 dpi, a strip per row
    for y in range(100, 3400, 40):
        ImageDraw.Draw(page).text((100, y), "The quick brown fox jumps over the lazy dog " * 6, fill=0)
    for compression in ("group4", "tiff_lzw", "packbits"):  # libtiff reads the strips: refused for no gain before
        files[f"{compression} TIFF of a strip per row"] = encode(page, "TIFF", compression=compression, strip_size=310)
    # a PNG whose data comes in chunks of 1 KB, smaller than any common encoder's
    signature_and_header = encode(chelsea(), "PNG")[:33]
    data = zlib.compress(b"".join(b"\x00" + row.tobytes() for row in np.asarray(chelsea())))
    files["PNG in 1 KB chunks"] = (signature_and_header + b"".join(png_chunk(b"IDAT", data[start:start + 1024])
                                                                   for start in range(0, len(data), 1024))
                                   + png_chunk(b"IEND", b""))
    return files


def test_real_files_of_every_format_pass_and_decode():
    for name, blob in real_files().items():
        check_structure(blob)
        assert decode_image(blob, 10**8).size[0] > 0, name


@pytest.mark.parametrize("crafted, what", [
    (png_with_empty_chunks(1_500_000), "chunks"),
    (png_with_empty_chunks(0, 1_000_000), "chunks"),  # after the pixels: Pillow reads them as it loads
    (tiny_jpeg()[:2] + b"\xff\xfe\x00\x02" * 1_000_000 + tiny_jpeg()[2:], "segments, padding and stray bytes"),
    (tiny_jpeg()[:2] + b"\xff" * 10_000_000 + tiny_jpeg()[2:], "segments, padding and stray bytes"),
    (b"\xff\xd8\xff\xd9" + b"\xff" * 4_000_000 + tiny_jpeg(), "segments, padding"),  # Pillow reads past the end
    (tiny_jpeg()[:20] + b"\x00" * 4_000_000 + tiny_jpeg()[20:], "segments, padding"),  # stray bytes after APP0
    (tiny_jpeg()[:2] + b"\xff\x00" * 2_000_000 + tiny_jpeg()[2:], "segments, padding"),  # escaped 0xFFs
    (gif_with_comment_blocks(5_000_000), "extension blocks"),
    (gif_with_stray_bytes(4_000_000), "extension blocks and stray bytes"),
    # 10 s and 1.3 GB to open, 23 s more to decode
    (tiff_of_one_row_strips(4_500_000), "directory entries, strips and tiles"),
    (tiff_of_one_row_strips(500_000, kind=1), "directory entries, strips and tiles"),  # offsets as bytes
    (tiff_of_one_row_strips(500_000, kind=6), "directory entries, strips and tiles"),  # as signed bytes
])
def test_a_file_of_nothing_but_structure_is_refused_before_pillow_walks_it(crafted, what):
    """Pillow took 0.1 to 0.35 s per MB to open these (an 18 MB PNG of empty chunks: 3.8 s)."""
    started = time.perf_counter()
    with pytest.raises(InvalidImage, match=f"more than {allowed_units(len(crafted))} {what}"):
        decode_image(crafted, 10**8)
    assert declared_pixels(crafted) == (0, 0)
    assert time.perf_counter() - started < 1.0


def test_the_allowance_is_exact():
    """1000 units, and one more per 256 bytes of file: the most empty chunks that fit pass."""
    def units(empty: int) -> int:
        return empty + 2  # with IHDR and IDAT

    most = next(empty for empty in range(2000)
                if units(empty + 1) > allowed_units(len(png_with_empty_chunks(empty + 1))))
    assert units(most) <= allowed_units(len(png_with_empty_chunks(most))) and most > 1000
    assert decode_image(png_with_empty_chunks(most), 10**6).size == (1, 1)
    with pytest.raises(InvalidImage):
        decode_image(png_with_empty_chunks(most + 1), 10**6)


def test_a_large_run_length_bmp_is_refused_before_pillow_decodes_it_in_python():
    """Pillow's BMP run-length decoder is Python: 20 MB of one-pixel runs took 2.8 s."""
    crafted = rle8_bmp(2000, 600)
    started = time.perf_counter()
    with pytest.raises(InvalidImage, match="a run-length compressed BMP may be at most 2097152 bytes"):
        decode_image(crafted, 10**8)
    assert time.perf_counter() - started < 1.0
