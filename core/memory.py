"""What a job will need in memory, estimated before it is queued, so that no accepted job
needs more than a worker has. Measured on EfficientNet-Lite0 on this CPU: a training step
(forward and backward) holds about 1.9 KB of activations per input pixel per image, at
batch 4 and 16 alike; larger networks need more, so the estimate counts 3 KB."""

from __future__ import annotations

ACTIVATION_BYTES_PER_PIXEL = 3000
BASELINE_BYTES = 1024**3  # the worker process, torch, the network and its optimizer state
# The confusion matrix lives as a tensor, then as Python ints written as JSON (a job artifact, metrics.json).
CONFUSION_BYTES_PER_CELL = 48


def training_bytes(images: int, classes: int, batch_size: int, input_size: int, resize_margin: int) -> int:
    """A fine-tune: every image preloaded as uint8 squares of input_size + resize_margin, one
    batch's activations and gradients (a batch holds at most every image), and the confusion matrix."""
    side = input_size + resize_margin
    batch = min(batch_size, images)
    return (BASELINE_BYTES + images * 3 * side * side + batch * input_size ** 2 * ACTIVATION_BYTES_PER_PIXEL
            + classes ** 2 * CONFUSION_BYTES_PER_CELL)


def maximization_bytes(targets: int, size: int) -> int:
    """Activation maximization: all targets optimized as one batch of `size` images."""
    return BASELINE_BYTES + targets * size * size * ACTIVATION_BYTES_PER_PIXEL


def describe(size: int) -> str:
    """A byte count as people read it, in messages."""
    return f"{size / 1024**3:.1f} GiB" if size >= 1024**3 else f"{size / 1024**2:.1f} MiB"
