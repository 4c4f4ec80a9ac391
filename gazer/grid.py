"""One image of labelled tiles (`gazer compare`): each explanation's overlay, scaled to a common
width, with its method's name and time written in a strip below it."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from gazer.errors import BadAnswer

TILE_WIDTH = 320
# A tile fits TILE_WIDTH x MAX_TILE_HEIGHT (a tall overlay is narrower), and an overlay over
# MAX_OVERLAY_PIXELS (twice the service's default GAZER_MAX_IMAGE_PIXELS, under Pillow's own
# warning) is not decoded: an answer's few bytes cannot make gigabytes of tiles.
MAX_TILE_HEIGHT = 4 * TILE_WIDTH
MAX_OVERLAY_PIXELS = 80_000_000
LABEL_HEIGHT = 28
MAX_COLUMNS = 4
FONT_SIZE = 16
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)


@dataclass(frozen=True)
class Tile:
    png: bytes
    label: str


def layout(tiles: int) -> tuple[int, int]:
    """(columns, rows): one row up to MAX_COLUMNS tiles, then rows of MAX_COLUMNS."""
    columns = max(1, min(tiles, MAX_COLUMNS))
    return columns, max(1, math.ceil(tiles / columns))


def _scaled(png: bytes) -> Image.Image:
    """The overlay scaled to fit a tile; BadAnswer if it is not an image, or larger than any the
    service makes."""
    try:
        image = Image.open(io.BytesIO(png))
        if image.width * image.height > MAX_OVERLAY_PIXELS:
            raise BadAnswer(f"an overlay is {image.width} x {image.height} pixels; this client draws at most "
                            f"{MAX_OVERLAY_PIXELS:,}")
        scale = min(TILE_WIDTH / image.width, MAX_TILE_HEIGHT / image.height)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        return image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    except (OSError, Image.DecompressionBombError) as error:
        raise BadAnswer(f"an overlay is not an image this client can draw ({error})") from None


def grid(tiles: list[Tile]) -> Image.Image:
    """Tiles left to right, top to bottom; each cell is as tall as the tallest scaled tile."""
    if not tiles:
        raise ValueError("no tiles to lay out")
    images = [_scaled(tile.png) for tile in tiles]
    columns, rows = layout(len(tiles))
    cell_height = max(image.height for image in images) + LABEL_HEIGHT
    canvas = Image.new("RGB", (columns * TILE_WIDTH, rows * cell_height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=FONT_SIZE)
    for index, (tile, image) in enumerate(zip(tiles, images)):
        left, top = (index % columns) * TILE_WIDTH, (index // columns) * cell_height
        canvas.paste(image, (left, top))
        draw.text((left + 6, top + cell_height - LABEL_HEIGHT + (LABEL_HEIGHT - FONT_SIZE) // 2), tile.label,
                  fill=INK, font=font)
    return canvas
