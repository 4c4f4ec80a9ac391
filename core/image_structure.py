"""What Pillow walks in Python before its C decoders take over, counted at a bounded cost before
it opens an upload, step by step as Pillow takes them: a PNG's chunks (to its end, or an animated
one's second frame), a JPEG's segments, padding and stray bytes up to its first scan (past an end
of image too), a GIF's extension sub-blocks and stray bytes up to its first image, a TIFF's
directory entries and uncompressed strips or tiles (4.5 million strips of one row took 10 s and
1.3 GB to open, and 23 s more to decode). Each costs
Pillow microseconds, and a file can be made of nothing else: 18 MB of empty PNG chunks took 3.8 s
to open (twice per request: headers, then decoding), 10 MB of JPEG padding 3.5 s, where a photo
that size decodes in tens of milliseconds. A file may have `allowed_units` of them, generous for
any real encoder (a PNG's data comes in chunks of 8 KB or more). A BMP compressed by run lengths,
which Pillow decodes in Python, may be at most BMP_RLE_MAX_BYTES."""

from __future__ import annotations

from core.errors import InvalidImage

BASE_UNITS = 1000
BYTES_PER_UNIT = 256
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# TIFF field types Pillow reads as one bytes object (BYTE, ASCII, UNDEFINED), and the sizes of the
# others, each of whose values it unpacks into a Python object
_TIFF_BYTE_TYPES = {1, 2, 7}
_TIFF_SIZES = {3: 2, 4: 4, 5: 8, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}  # others: 1
_TIFF_COMPRESSION = 259  # 1: none
_TIFF_SUB_DIRECTORIES = {34665, 34853, 40965}  # Exif, GPS, interoperability: read for the orientation
# Each strip or tile is a piece Pillow decodes on its own (StripOffsets, TileOffsets): a unit each;
# other numbers are unpacked in C, 1/16 of a unit each (5 million, 20 MB, take 180 MB as Python ints)
_TIFF_PIECES = {273, 324}
_TIFF_NUMBERS_PER_UNIT = 16
# A run-length BMP is decoded by Pillow in Python, about 0.3 us a byte: 2 MiB of it take 0.6 s
BMP_RLE_MAX_BYTES = 2 * 2**20
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
    elif data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        found, what = _tiff_values(data, most), "directory entries, strips and tiles"
    elif data[:2] == b"BM":
        _check_bmp(data)
        return
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


def _tiff_values(data: bytes, most: int) -> int:
    """The entries of a TIFF's first directory and of the Exif and GPS ones it points to, its strips
    or tiles where they are stored raw (Pillow reads each as a piece of its own in Python; libtiff
    reads compressed ones), and a sixteenth of the other numbers their tags hold (as many as the
    file has room for: Pillow skips a tag whose values are not there)."""
    order = "little" if data[:2] == b"II" else "big"
    big = data[2:4] in (b"+\x00", b"\x00+")  # BigTIFF: 8-byte counts and offsets
    counted, offset_size = (8, 8) if big else (2, 4)
    entry_size = 4 + 2 * offset_size  # tag, type, count, value or offset

    def number(at: int, size: int) -> int:
        return int.from_bytes(data[at:at + size], order)

    directories, seen, count, pieces, raw = [number(8, 8) if big else number(4, 4)], set(), 0, 0, True
    while directories and count <= most:
        position = directories.pop()
        if position in seen or position + counted > len(data):
            continue
        seen.add(position)
        entries = min(number(position, counted), (len(data) - position - counted) // entry_size)
        count += entries
        for at in range(position + counted, position + counted + entry_size * min(entries, most + 1), entry_size):
            if count > most:
                break
            tag, kind, values = number(at, 2), number(at + 2, 2), number(at + 4, offset_size)
            values = min(values, len(data) // _TIFF_SIZES.get(kind, 1))
            if tag in _TIFF_PIECES:
                pieces += values
            elif kind not in _TIFF_BYTE_TYPES:
                count += values // _TIFF_NUMBERS_PER_UNIT
            if tag == _TIFF_COMPRESSION and len(seen) == 1:
                raw = number(at + 4 + offset_size, 2 if kind == 3 else offset_size) == 1
            if tag in _TIFF_SUB_DIRECTORIES:
                directories.append(number(at + 4 + offset_size, offset_size))
    return count + (pieces if raw else pieces // _TIFF_NUMBERS_PER_UNIT)


def _check_bmp(data: bytes) -> None:
    info_size = int.from_bytes(data[14:18], "little") if len(data) >= 18 else 0
    compression = int.from_bytes(data[30:34], "little") if len(data) >= 34 and info_size >= 40 else 0  # not OS/2's
    if compression in (1, 2) and len(data) > BMP_RLE_MAX_BYTES:  # RLE8, RLE4
        raise InvalidImage(f"a run-length compressed BMP may be at most {BMP_RLE_MAX_BYTES} bytes (this one is "
                           f"{len(data)}): it decodes slowly; send it as PNG")
