"""Image decoding with limits, preprocessing from a ModelSpec, heatmap placement, colour maps."""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from core.errors import GazerError, ImageTooLarge, InvalidImage, InvalidRequest
from core.image_structure import check_structure
from core.parallel import parallel_map
from core.models.spec import ModelSpec
from core.names import PICTURE_SIDE

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
# The only formats Pillow may open: no EPS/PostScript (whose plugin runs Ghostscript), no others.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
_INTERPOLATION = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
# Each scan of a progressive JPEG is one more pass over the whole image, and a file may repeat a
# scan at a few bytes a copy: 300 copies made a 159 KB, 36-megapixel file take 11.6 s to decode.
# libjpeg's default progressive script has 10 scans (6 for grey), the 20 foolbox photos 7 to 13;
# 64 still lets a 36-megapixel file cost about 5 s here, so the bound stays near what is real.
MAX_JPEG_SCANS = 64


@dataclass(frozen=True)
class CropBox:
    """The region of the original image (pixel coordinates, floats) that the model sees."""

    left: float
    top: float
    right: float
    bottom: float

    def rounded(self) -> tuple[int, int, int, int]:
        """Whole pixels, at least one each way: the crop of a 3000x1 image is under a pixel wide."""
        left, top = round(self.left), round(self.top)
        return left, top, max(round(self.right), left + 1), max(round(self.bottom), top + 1)


def needed_sides(spec: ModelSpec) -> tuple[int, int]:
    """(shorter, longer) sides that a JPEG decoded at a smaller scale keeps for `spec`'s model.

    A JPEG far larger than what is made of it is decoded by libjpeg at 1/2, 1/4 or 1/8 of its
    size (Pillow's draft): the smallest of those whose shorter side stays at least twice the side
    the model resizes to, and whose longer side stays at least PICTURE_SIDE for an explanation's
    pictures. A 4032 x 3024 photo decodes at 1008 x 756 in 0.43x the time, and the model's input
    moves by at most 3 pixel levels, as much as Pillow's reducing_gap already moves it
    (python -m bench.large_photos).
    """
    return 2 * (spec.input_size + spec.resize_margin), PICTURE_SIDE


def smaller_scale(width: int, height: int, at_least: tuple[int, int] | None) -> int:
    """1, 2, 4 or 8: what an image of `width` x `height` is divided by when it is decoded
    (needed_sides), by the rule Pillow's JPEG draft follows."""
    if at_least is None:
        return 1
    shorter, longer = at_least
    wanted_width, wanted_height = (longer, shorter) if width >= height else (shorter, longer)
    fits = min(width // wanted_width, height // wanted_height)
    return next((scale for scale in (8, 4, 2) if fits >= scale), 1)


def decode_image(data: bytes, max_pixels: int, at_least: tuple[int, int] | None = None) -> Image.Image:
    """Decode an upload to an RGB image, honouring EXIF orientation, at the smallest of 1/2, 1/4
    and 1/8 of its size that keeps (shorter, longer) sides `at_least` (needed_sides): a JPEG
    decoded so by libjpeg, any other image shrunk so (a box filter) once decoded.

    Raises InvalidImage for anything that is not a complete image and ImageTooLarge for
    images whose header declares more than `max_pixels` pixels (checked before decoding).
    """
    if not data:
        raise InvalidImage("the file is empty")
    check_structure(data)
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(f"image declares too many pixels: {error}") from None
    except MemoryError:
        raise
    except Exception:  # UnidentifiedImageError, or a header too damaged to parse
        raise InvalidImage(f"the file is not an image in a supported format ({', '.join(ALLOWED_FORMATS)})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    if width == 0 or height == 0:
        raise InvalidImage("the image has no pixels")
    if image.format in ("JPEG", "MPO"):  # Pillow names a JPEG holding several pictures MPO
        _check_jpeg_scans(data)
        if at_least is not None:
            shorter, longer = at_least
            image.draft(None, (longer, shorter) if width >= height else (shorter, longer))
        scale = 1  # drafted: libjpeg decodes it at that scale itself
    else:
        scale = smaller_scale(width, height, at_least)
    try:
        image.load()
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(f"image decodes to too many pixels: {error}") from None
    except MemoryError:
        raise
    except Exception as error:  # corrupt data raises OSError, SyntaxError, TypeError, struct.error, ...
        raise InvalidImage(f"the image is truncated or corrupt: {error}") from None
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a damaged EXIF block: the pixels are fine, keep them as stored
        pass
    try:
        image = _to_rgb(image)
    except ValueError as error:  # a mode Pillow opens but cannot convert
        raise InvalidImage(f"the image's colour mode {image.mode} cannot be read as RGB ({error})") from None
    return image.reduce(scale) if scale > 1 else image


def jpeg_scans(data: bytes) -> int:
    """A JPEG's start-of-scan markers, counted by their bytes, which entropy-coded data cannot
    hold (a 0xFF there is followed by 0x00); other segments (EXIF, ICC) may add a few by chance."""
    return data.count(b"\xff\xda")


def _check_jpeg_scans(data: bytes) -> None:
    scans = jpeg_scans(data)
    if scans > MAX_JPEG_SCANS:
        raise InvalidImage(f"the JPEG has {scans} scans; the limit is {MAX_JPEG_SCANS}")


def declared_pixels(data: bytes, at_least: tuple[int, int] | None = None) -> tuple[int, int]:
    """(width x height as the header declares them, the pixels decode_image keeps of them with
    `at_least`), without decoding; (0, 0) when the header cannot be read (decode_image then says
    why)."""
    try:
        check_structure(data)
        width, height = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS).size
    except Exception:
        return 0, 0
    scale = smaller_scale(width, height, at_least)
    return width * height, (width // scale) * (height // scale)


def decode_images(blobs: list[bytes], max_pixels: int, max_total_pixels: int,
                  names: list[str | None] | None = None, declared: list[int] | None = None,
                  at_least: tuple[int, int] | None = None) -> list[Image.Image]:
    """decode_image for each upload, in parallel, once the headers show that all of them
    together stay within `max_total_pixels` (decoded, they are all in memory at once).
    Errors name the file: its index, and its name where `names` has one; the first file's
    refusal names the others refused too. `declared`: each one's declared_pixels, where the
    caller has read them already."""
    def decode(index: int) -> Image.Image | GazerError:
        try:
            return decode_image(blobs[index], max_pixels, at_least)
        except GazerError as error:
            name = names[index] if names else None
            error.detail = f"file {index}{f' ({name[:100]!r})' if name else ''}: {error.detail}"
            error.extra.setdefault("field", f"file.{index}")  # where a client shows it: by that file
            return error

    declared = declared if declared is not None else [declared_pixels(blob)[0] for blob in blobs]
    # refused from their headers, with their own messages, before anything is decoded
    too_large = {index: decode(index) for index, pixels in enumerate(declared) if pixels > max_pixels}
    rest = [index for index in range(len(blobs)) if index not in too_large]
    if sum(declared[index] for index in rest) > max_total_pixels:
        refuse_any(list(too_large.values()))
        raise ImageTooLarge(f"the {len(blobs)} images declare {sum(declared)} pixels together; "
                            f"the limit for one request is {max_total_pixels}")
    decoded = dict(zip(rest, parallel_map(decode, rest)))
    images = [too_large[index] if index in too_large else decoded[index] for index in range(len(blobs))]
    refuse_any(images)
    return images


def refuse_any(decoded: list[Image.Image | GazerError]) -> None:
    """The first file's refusal, naming every file refused (`file_errors`: their fields, details
    and statuses), so that a client drops them all at once rather than one request at a time."""
    refused = [error for error in decoded if isinstance(error, GazerError)]
    if refused:
        refused[0].extra["file_errors"] = [(error.extra["field"], error.detail, error.status) for error in refused]
        raise refused[0]


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float32)
        brightest = values.max(initial=0)
        if image.mode.startswith("I;16") or brightest > 255:
            peak = 65535.0
        elif image.mode == "F" and brightest <= 1.0:  # a float image in [0, 1]
            peak = 1.0
        else:
            peak = 255.0
        grey = Image.fromarray(np.clip(values * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8), "L")
        key = image.info.get("transparency")  # a 16-bit key value (PNG's tRNS): the pixels that hold it
        image = grey if not isinstance(key, int) else \
            Image.merge("LA", (grey, Image.fromarray(np.where(np.asarray(image) == key, 0, 255).astype(np.uint8))))
    if image.mode in ("P", "L", "RGB") and "transparency" in image.info:  # a palette entry or 8-bit key colour
        image = image.convert("RGBA")
    if image.mode == "La":  # premultiplied, which Pillow converts only to LA
        image = image.convert("LA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


# How an image becomes the model's S x S input: `crop` is the model's own eval preprocessing
# (short side to S + margin, centre crop S); `stretch` resizes the whole image to S x S, the
# aspect ratio not kept, so nothing is cut off and the explanation covers every pixel.
RESIZE_MODES = ("crop", "stretch")


def check_resize(resize: str) -> None:
    if resize not in RESIZE_MODES:
        raise InvalidRequest(f"unknown resize {resize!r}", field="resize", valid=list(RESIZE_MODES))


def crop_box(width: int, height: int, spec: ModelSpec, resize: str = "crop") -> CropBox:
    """The region of the image the model sees, in original pixels."""
    check_resize(resize)
    if resize == "stretch":
        return CropBox(0.0, 0.0, float(width), float(height))
    if spec.torchvision_resize:
        return _torchvision_crop_box(width, height, spec.input_size, spec.input_size + spec.resize_margin)
    side = min(width, height) * spec.input_size / (spec.input_size + spec.resize_margin)
    left, top = (width - side) / 2, (height - side) / 2
    return CropBox(left, top, left + side, top + side)


def _torchvision_geometry(width: int, height: int, size: int, short_side: int) -> tuple[int, int, int, int]:
    """torchvision's `Resize(short_side)` then `CenterCrop(size)`: the resized image's whole-pixel
    sides (the long one truncated) and the crop's whole-pixel offsets."""
    if width <= height:
        resized_width, resized_height = short_side, int(short_side * height / width)
    else:
        resized_width, resized_height = int(short_side * width / height), short_side
    return resized_width, resized_height, centre_offset(resized_width, size), centre_offset(resized_height, size)


def centre_offset(outer: int, inner: int) -> int:
    """Where torchvision's `CenterCrop` starts an `inner` window in `outer` pixels (an odd
    difference rounds half to even: 21.5 -> 22)."""
    return int(round((outer - inner) / 2.0))


def _torchvision_crop_box(width: int, height: int, size: int, short_side: int) -> CropBox:
    resized_width, resized_height, left, top = _torchvision_geometry(width, height, size, short_side)
    scale_x, scale_y = width / resized_width, height / resized_height
    return CropBox(left * scale_x, top * scale_y, (left + size) * scale_x, (top + size) * scale_y)


def resize_region(image: Image.Image, box: tuple[float, float, float, float], side: int,
                  spec: ModelSpec) -> Image.Image:
    """`box` of `image` resized to side x side with the spec's interpolation.

    reducing_gap: a large photo is first shrunk by an integer factor (box filter), down to no
    less than 3x the target, then resampled: a 4032x2682 photo takes 7 ms instead of 25, pixels
    within 1 level; below a 6x reduction nothing changes.
    """
    return image.resize((side, side), _INTERPOLATION[spec.interpolation], box=box, reducing_gap=3.0)


def _whole_image_resized(width: int, height: int, spec: ModelSpec, resize: str) -> bool:
    """Whether the model's input is the whole image resized then cropped (torchvision's way),
    not the crop box resized: not where the whole resized image would be over 4 inputs' pixels
    (a 40000 x 1 image: billions), which take the crop box's resize (the same pixels within a level)."""
    if not (spec.torchvision_resize and resize == "crop"):
        return False
    resized_width, resized_height, _, _ = _torchvision_geometry(width, height, spec.input_size,
                                                                spec.input_size + spec.resize_margin)
    return resized_width * resized_height <= 4 * spec.input_size ** 2


def _torchvision_resize(image: Image.Image, spec: ModelSpec) -> Image.Image:
    """Exactly torchvision's `Resize` + `CenterCrop` on a PIL image: the whole image resized,
    then cropped (resizing only the crop's region differs by a pixel level here and there)."""
    size = spec.input_size
    resized_width, resized_height, left, top = _torchvision_geometry(image.width, image.height, size,
                                                                     size + spec.resize_margin)
    resized = image.resize((resized_width, resized_height), _INTERPOLATION[spec.interpolation])
    return resized.crop((left, top, left + size, top + size))


def preprocess(images: list[Image.Image], spec: ModelSpec,
               resize: str = "crop") -> tuple[np.ndarray, list[CropBox]]:
    """RGB images -> float32 NCHW batch normalized as the spec says, plus each crop box."""
    size = spec.input_size
    batch = np.empty((len(images), 3, size, size), dtype=np.float32)
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    inv_std = (1.0 / np.asarray(spec.std, dtype=np.float32))[:, None, None]

    def one(index: int) -> CropBox:
        image = images[index]
        box = crop_box(image.width, image.height, spec, resize)
        crop = _torchvision_resize(image, spec) if _whole_image_resized(image.width, image.height, spec, resize) \
            else resize_region(image, (box.left, box.top, box.right, box.bottom), size, spec)
        # uint8 HWC -> float32 CHW in one pass, then scaled in place: 3x faster than arithmetic
        # on the transposed float view, with the same float32 results.
        np.subtract(np.asarray(crop).transpose(2, 0, 1), mean, out=batch[index], dtype=np.float32)
        batch[index] *= inv_std
        return box

    return batch, parallel_map(one, range(len(images)))


def resize_matrices(width: int, height: int, spec: ModelSpec, resize: str = "crop") -> tuple[np.ndarray, np.ndarray]:
    """preprocess's resize of a width x height image as two matrices, (S, height) for its rows
    and (S, width) for its columns, in Pillow's fixed point: the input is
    round(rows @ round(pixels @ columns.T)) per channel, rounding as Pillow does after each
    pass (Pillow runs the passes in either order, so a few pixels differ by up to 7 levels).
    Pillow's reducing_gap is not followed: for a reduction over 6x it moves pixels by about a level."""
    size = spec.input_size
    if _whole_image_resized(width, height, spec, resize):
        resized_width, resized_height, left, top = _torchvision_geometry(width, height, size, size + spec.resize_margin)
        rows = resample_weights(height, resized_height, spec.interpolation, fixed_point=True)[top:top + size]
        columns = resample_weights(width, resized_width, spec.interpolation, fixed_point=True)[left:left + size]
        return rows, columns
    box = crop_box(width, height, spec, resize)
    return (resample_weights(height, size, spec.interpolation, box.top, box.bottom, fixed_point=True),
            resample_weights(width, size, spec.interpolation, box.left, box.right, fixed_point=True))


# Up to this many rows and columns a map is resized by two small matrix products (a few
# multiply-adds per pixel). Side by side, numpy's BLAS on one thread: 7 x 7 -> 448 x 448 in
# 0.4 ms where Pillow's float resize took 1.2-1.7, and 14 x 14 -> 1500 x 1000 in 2 ms against 9.5-10.4.
_MATRIX_RESIZE_MAX = 32


def _bilinear(x: np.ndarray) -> np.ndarray:
    return np.maximum(0.0, 1.0 - np.abs(x))


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Pillow's cubic convolution, a = -0.5."""
    x = np.abs(x)
    return np.where(x < 1.0, (1.5 * x - 2.5) * x * x + 1, np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * -0.5, 0.0))


_FILTERS = {"bilinear": (_bilinear, 1.0), "bicubic": (_bicubic, 2.0)}
_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit images


def resample_weights(source: int, size: int, interpolation: str = "bilinear", start: float = 0.0,
                     stop: float | None = None, fixed_point: bool = False) -> np.ndarray:
    """(size, source) float32 matrix: Pillow's resampling of samples `start`..`stop` (default:
    all `source`) to `size` along one axis, its filter widened by the scale when shrinking and
    each row's weights summing to 1; `fixed_point`: rounded as Pillow rounds them for 8-bit images."""
    kernel, support = _FILTERS[interpolation]
    stop = source if stop is None else stop
    scale = (stop - start) / size
    widening = max(scale, 1.0)
    support *= widening
    centres = start + (np.arange(size) + 0.5) * scale
    first = np.maximum((centres - support + 0.5).astype(np.int64), 0)
    ends = np.minimum((centres + support + 0.5).astype(np.int64), source)
    taps = first[:, None] + np.arange(2 * int(np.ceil(support)) + 1)
    weights = kernel((taps + 0.5 - centres[:, None]) / widening) * (taps < ends[:, None])
    weights /= weights.sum(axis=1, keepdims=True)
    if fixed_point:
        one = float(1 << _PRECISION_BITS)
        weights = np.trunc(weights * one + np.where(weights < 0, -0.5, 0.5)) / one
    matrix = np.zeros((size, source + taps.shape[1]))
    matrix[np.arange(size)[:, None], taps] = weights
    return matrix[:, :source].astype(np.float32)


@functools.lru_cache(maxsize=16)  # a served model's maps come in a few sizes; 0.06 ms each to build
def bilinear_weights(source: int, size: int) -> np.ndarray:
    """resample_weights for a float map, read-only: Pillow's BILINEAR resampling of an "F" image."""
    matrix = resample_weights(source, size)
    matrix.flags.writeable = False
    return matrix


def resize_map(saliency: np.ndarray, width: int, height: int) -> np.ndarray:
    """A float map bilinearly resized to (height, width), as Pillow resizes an "F" image."""
    saliency = np.asarray(saliency, dtype=np.float32)
    if max(saliency.shape) <= _MATRIX_RESIZE_MAX:
        return bilinear_weights(saliency.shape[0], height) @ saliency @ bilinear_weights(saliency.shape[1], width).T
    return np.array(Image.fromarray(saliency, "F").resize((width, height), Image.Resampling.BILINEAR))


def place_heatmap(saliency: np.ndarray, box: CropBox, width: int, height: int) -> np.ndarray:
    """A [0, 1] map over the model's input -> uint8 map the size of the original image,
    bilinearly upsampled into the crop box (its peak scaled to 255), 0 outside it."""
    left, top, right, bottom = box.rounded()
    resized = resize_map(saliency, max(right - left, 1), max(bottom - top, 1))
    peak = float(resized.max())
    canvas = np.zeros((height, width), dtype=np.uint8)
    resized *= np.float32(255.0 / peak if peak > 0 else 0.0)
    resized += np.float32(0.5)
    inside = np.clip(resized, 0, 255, out=resized).astype(np.uint8)
    canvas[top:bottom, left:right] = inside[: bottom - top, : right - left]
    return canvas


def _jet_table() -> np.ndarray:
    x = np.arange(256, dtype=np.float32) / 255.0
    channels = [np.clip(1.5 - np.abs(4.0 * x - offset), 0.0, 1.0) for offset in (3.0, 2.0, 1.0)]
    return (np.stack(channels, axis=-1) * 255.0 + 0.5).astype(np.uint8)


JET = _jet_table()  # 256 x RGB: the classic 'jet' colours, blue = low, red = high
_HALF_JET_PALETTE = (JET >> 1).tobytes()


def overlay(image: Image.Image, heat: np.ndarray, box: CropBox) -> np.ndarray:
    """The image with the colour-mapped heatmap blended half-and-half over the crop box."""
    left, top, right, bottom = box.rounded()
    pixels = np.array(image, dtype=np.uint8)
    region = pixels[top:bottom, left:right]
    region >>= 1
    # half the jet colour of each heat value, by Pillow's palette lookup: 0.25 ms for 448 x 448,
    # where numpy's take (the fastest numpy way) took 0.55
    colour = Image.fromarray(np.ascontiguousarray(heat[top:bottom, left:right]))
    colour.putpalette(_HALF_JET_PALETTE)
    region += np.asarray(colour.convert("RGB"))
    return pixels
