"""What Pillow walks in Python before its C decoders take over, counted at a bounded cost before
it opens an upload, step by step as Pillow takes them: a PNG's chunks (to its end, or an animated
one's second frame), a JPEG's segments, padding and stray bytes up to its first scan (past an end
of image too), a GIF's extension sub-blocks and stray bytes up to its first image. Each costs
Pillow microseconds, and a file can be made of nothing else: 18 MB of empty PNG chunks took 3.8 s
to open (twice per request: headers, then decoding), 10 MB of JPEG padding 3.5 s, where a photo
that size decodes in tens of milliseconds. A file may have `allowed_units` of them, generous for
any real encoder (a PNG's data comes in chunks of 8 KB or more)."""

from __future__ import annotations

from core.errors import InvalidImage

BASE_UNITS = 1000
BYTES_PER_UNIT = 256
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# markers Pillow reads no length after (JpegImagePlugin.MARKER's without a handler); below 0xC0
# it finds no marker and stops
_JPEG_UNSIZED = {0xC8, *range(0xD0, 0xDA), *range(0xF0, 0xFE)}


def allowed_units(size: int) -> int:
    return BASE_UNITS + size // BYTES_PER_UNIT


def check_structure(data: bytes) -> None:
    """Raises InvalidImage where `data` holds more structure than its size allows; walks at
    most that much of it."""
    most = allowed_units(len(data))
    if data.startswith(_PNG_SIGNATURE):
        found, what = _png_chunks(data, most), "chunks"
    elif data.startswith(b"\xff\xd8"):
        found, what = _jpeg_segments(data, most), "segments, padding and stray bytes before its first scan"
    elif data[:6] in (b"GIF87a", b"GIF89a"):
        found, what = _gif_blocks(data, most), "extension blocks and stray bytes before its first image"
    else:
        return
    if found > most:
        raise InvalidImage(f"the file has more than {most} {what}, the most one of {len(data)} bytes may have")


def _png_chunks(data: bytes, most: int) -> int:
    position, count, animated, pixels_seen = len(_PNG_SIGNATURE), 0, False, False
    while position + 8 <= len(data) and count <= most:
        length, kind = int.from_bytes(data[position:position + 4], "big"), data[position + 4:position + 8]
        if kind == b"IEND" or (kind == b"fcTL" and animated and pixels_seen):  # Pillow stops at the next frame
            break
        animated |= kind == b"acTL"
        pixels_seen |= kind == b"IDAT"
        position += 12 + length
        count += 1
    return count


def _jpeg_segments(data: bytes, most: int) -> int:
    position, count = 2, 0
    while position + 1 < len(data) and count <= most:
        count += 1
        if data[position] != 0xFF:  # stray bytes, one at a time
            position += 1
            continue
        marker = data[position + 1]
        if marker == 0xDA:  # start of scan: libjpeg's from here
            break
        if marker == 0xFF:  # padding: the next 0xFF starts again
            position += 1
        elif marker == 0x00:  # an escaped 0xFF
            position += 2
        elif marker < 0xC0:
            break  # no marker: Pillow gives up
        elif marker in _JPEG_UNSIZED:
            position += 2
        else:
            position += 2 + int.from_bytes(data[position + 2:position + 4], "big")
    return count


def _gif_blocks(data: bytes, most: int) -> int:
    position, count = 13, 0
    if len(data) > 10 and data[10] & 0x80:  # a global colour table
        position += 3 << ((data[10] & 0x07) + 1)
    while position < len(data) and count <= most and data[position] not in b",;":  # an image, the end
        count += 1
        if data[position] != 0x21:  # stray bytes, one at a time
            position += 1
            continue
        position += 2  # an extension's introducer and label, then its sub-blocks to an empty one
        while position < len(data) and data[position] and count <= most:
            position += 1 + data[position]
            count += 1
        position += 1
    return count
