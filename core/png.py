"""A minimal, fast PNG writer for 8-bit grey or RGB arrays.

Rows use PNG's 'Up' filter ('Sub' for grey images; computed with numpy) and are deflated by
ISA-L at level 1: 0.95 ms for a 451x300 photo overlay, where Pillow at compress_level 1 takes
9 ms. Images over a few megabytes are deflated in horizontal strips on all cores, pigz-style:
each strip is a raw deflate stream ending on a byte boundary, so their concatenation is one
valid stream (2000x1330 RGB: 7.6 ms on 2 cores, 13.1 ms on one).
"""

from __future__ import annotations

import struct

import deflate
import numpy as np
from isal import isal_zlib

from core.parallel import parallel_map, workers

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPES = {1: 0, 3: 2}  # channels -> PNG colour type (grey, RGB)
_MIN_STRIP_BYTES = 1 << 20  # smaller strips cost more to hand over (and contend with ORT) than they save
_ADLER_BASE = 65521
_COMPACT_MAX_BYTES = 4 << 20  # beyond it compact costs over 30 ms: the fast path instead


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = isal_zlib.crc32(payload, isal_zlib.crc32(kind))
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def adler32_combine(first: int, second: int, second_length: int) -> int:
    """The Adler-32 of two concatenated byte strings from the checksums of each."""
    low = ((first & 0xFFFF) + (second & 0xFFFF) - 1) % _ADLER_BASE
    high = ((first >> 16) + (second >> 16) + second_length * ((first & 0xFFFF) - 1)) % _ADLER_BASE
    return (high << 16) | low


def _deflate_strip(strip: memoryview, last: bool) -> tuple[bytes, int]:
    compressor = isal_zlib.compressobj(1, isal_zlib.DEFLATED, -15)
    body = compressor.compress(strip) + compressor.flush(isal_zlib.Z_FINISH if last else isal_zlib.Z_SYNC_FLUSH)
    return body, isal_zlib.adler32(strip)


def zlib_stream(data: bytes, strips: int) -> bytes:
    """zlib-wrapped deflate of `data`, the work split into `strips` parallel pieces."""
    if strips < 2:
        return isal_zlib.compress(data, 1)
    view = memoryview(data)
    bounds = [len(data) * k // strips for k in range(strips + 1)]
    pieces = parallel_map(lambda k: _deflate_strip(view[bounds[k]:bounds[k + 1]], k == strips - 1),
                          range(strips))
    checksum = pieces[0][1]
    for k in range(1, strips):
        checksum = adler32_combine(checksum, pieces[k][1], bounds[k + 1] - bounds[k])
    return b"\x78\x01" + b"".join(body for body, _ in pieces) + struct.pack(">I", checksum)


def encode_png(pixels: np.ndarray, compact: bool = False) -> bytes:
    """(h, w) or (h, w, 3) uint8 array -> PNG bytes. `compact`: deflated by libdeflate at level 4
    (up to _COMPACT_MAX_BYTES): a 512 x 512 CAM heatmap in 15 KB instead of 22, for 1 ms more."""
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError("encode_png takes a uint8 array of shape (h, w) or (h, w, 3)")
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    rows = np.ascontiguousarray(pixels).reshape(height, width * channels)
    filtered = np.empty((height, width * channels + 1), dtype=np.uint8)
    if channels == 1:
        # 'Sub': grey images here are heatmaps, whose rows are smooth; the CAM heatmaps of the 20
        # foolbox photos deflate to 15.4 KB where 'Up' left 20.4 (RGB photos: 1-2% better with 'Up')
        filtered[:, 0] = 1
        filtered[:, 1] = rows[:, 0]
        np.subtract(rows[:, 1:], rows[:, :-1], out=filtered[:, 2:])
    else:
        filtered[:, 0] = 2
        filtered[0, 0] = 0
        filtered[0, 1:] = rows[0]
        np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOUR_TYPES[channels], 0, 0, 0)
    if compact and filtered.nbytes <= _COMPACT_MAX_BYTES:
        stream = deflate.zlib_compress(filtered.tobytes(), 4)
    else:
        stream = zlib_stream(filtered.tobytes(), max(1, min(workers(), filtered.nbytes // _MIN_STRIP_BYTES)))
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")
