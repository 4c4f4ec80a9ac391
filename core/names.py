"""Names that the wire layer needs without loading torch: the built-in models and the kinds
of attention module."""

from __future__ import annotations

# EfficientNet-Lite variants with the input size their ImageNet weights were trained at.
EFFICIENTNET_LITE_SIZES = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
BUILTIN_MODELS = tuple(EFFICIENTNET_LITE_SIZES)
DEFAULT_MODEL = "efficientnet_lite0"

ATTENTION_KINDS = ("se", "spatial", "cbam")
# An attention gate whose values over an image span less than this (max - min, in gate units)
# is reported flat, and its map shown as zeros (core.explain.attention_map).
FLAT_GATE_RANGE = 0.05

# The architecture of a model served from an uploaded ONNX file alone (no torch network).
ONNX_ARCHITECTURE = "onnx"

# Bounds on what a client may name: class and channel indices (ImageNet-21k has 21,843
# classes; each model checks its own count), and the classes answered per image.
MAX_INDEX = 100_000
MAX_TOP_K = 1000

# What explain can return: PNGs of the map alone and over the photo, and the raw map.
OUTPUTS = ("heatmap", "overlay", "map")
# The longer side a large JPEG keeps when it is decoded at a smaller scale (core.imaging), for
# the pictures of an explanation.
PICTURE_SIDE = 1000
