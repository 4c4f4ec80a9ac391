"""What Pillow walks in Python before its C decoders take over, counted at a bounded cost before
it opens an upload: a PNG's chunks (all of them), a JPEG's segments and fill bytes up to its first
scan, a GIF's extension sub-blocks up to its first image. Each costs Pillow microseconds, and a
file can be made of nothing else: 18 MB of empty PNG chunks took 3.8 s to open (twice per
request: headers, then decoding), 10 MB of JPEG fill bytes 3.5 s, where a photo that size
decodes in tens of milliseconds. A file may have ALLOWED_UNITS of them, generous for any real
encoder (a PNG's data comes in chunks of 8 KB or more)."""

from __future__ import annotations

from core.errors import InvalidImage

BASE_UNITS = 1000
BYTES_PER_UNIT = 256
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_UNSIZED = {0x01, *range(0xD0, 0xD9)}  # TEM, RSTn, SOI: markers with no length after them


def allowed_units(size: int) -> int:
    return BASE_UNITS + size // BYTES_PER_UNIT


def check_structure(data: bytes) -> None:
    """Raises InvalidImage where `data` holds more structure than its size allows; walks at
    most that much of it."""
    most = allowed_units(len(data))
    if data.startswith(_PNG_SIGNATURE):
        found, what = _png_chunks(data, most), "chunks"
    elif data.startswith(b"\xff\xd8"):
        found, what = _jpeg_segments(data, most), "segments and fill bytes before its first scan"
    elif data[:6] in (b"GIF87a", b"GIF89a"):
        found, what = _gif_blocks(data, most), "extension blocks before its first image"
    else:
        return
    if found > most:
        raise InvalidImage(f"the file has more than {most} {what}, the most one of {len(data)} bytes may have")


def _png_chunks(data: bytes, most: int) -> int:
    position, count = len(_PNG_SIGNATURE), 0
    while position + 8 <= len(data) and count <= most:
        length, kind = int.from_bytes(data[position:position + 4], "big"), data[position + 4:position + 8]
        position += 12 + length
        count += 1
        if kind == b"IEND":
            break
    return count


def _jpeg_segments(data: bytes, most: int) -> int:
    position, count = 2, 0
    while position + 1 < len(data) and count <= most and data[position] == 0xFF:
        while position < len(data) and data[position] == 0xFF and count <= most:  # fill bytes, then the marker
            position += 1
            count += 1
        if position >= len(data) or data[position] in (0xDA, 0xD9):  # start of scan, end of image
            break
        marker = data[position]
        position += 1 if marker in _JPEG_UNSIZED else 1 + int.from_bytes(data[position + 1:position + 3], "big")
    return count


def _gif_blocks(data: bytes, most: int) -> int:
    position, count = 13, 0
    if len(data) > 10 and data[10] & 0x80:  # a global colour table
        position += 3 << ((data[10] & 0x07) + 1)
    while position < len(data) and count <= most and data[position] == 0x21:  # an extension
        position += 2  # introducer, label
        while position < len(data) and data[position] and count <= most:  # its sub-blocks, to an empty one
            position += 1 + data[position]
            count += 1
        position += 1
        count += 1
    return count
