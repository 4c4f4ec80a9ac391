"""ModelSpec: everything needed to use a model without guessing."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    id: str
    version: int
    architecture: str
    labels: tuple[str, ...]
    input_size: int
    # Preprocessing: pixel values in 0..255 become (x - mean) / std per channel.
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # Resize the short side to input_size + resize_margin, then centre-crop input_size.
    resize_margin: int
    interpolation: str
    cam_layer: str
    classifier_layer: str
    weights_digest: str = ""
    description: str = ""
    head_hidden: int = 0
    dropout: float | None = None
    attention_type: str = "none"   # none | se | spatial | cbam (core.attention)
    attention_stages: int = 1       # after the last feature stage, or after each of the top N
    # The gate form its attention weights were trained with (core.attention.GATE_FORMS): specs
    # written before the residual form existed have none, and mean the sigmoid gate.
    attention_gate: str = "sigmoid"
    attention_stride: int | None = None  # only at stages of this stride (core.attention.choose_points)
    # Set for fine-tuned models: what they were trained from.
    base_model: str | None = None
    # The logits are `classifier_layer` applied to the global average of `cam_layer` (CAM works).
    linear_head: bool = True
    # Resize and crop on torchvision's pixel grid (whole-pixel resized sides and crop offsets,
    # as `Resize` + `CenterCrop`), for models trained with torchvision's transforms.
    torchvision_resize: bool = False
    # An uploaded ONNX graph: the batch sizes its check ran, the only ones it is run at
    # (core.models.onnx_probe.batches). None: a graph of ours, run at any size.
    batch_sizes: tuple[int, ...] | None = None
    # An uploaded ONNX graph: one image's forward's FLOPs, counted by its check (flops.onnx_flops).
    # None: a network of ours, counted when it loads, or a graph uploaded before the count.
    flops: int | None = None
    # An uploaded ONNX graph: the most an image took at any size its check ran, over what one of
    # the explain budget's reference took in a batch of that size, or of at most 4 (relative_time).
    # None: as for `flops`.
    time_ratio: float | None = None

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def ref(self) -> str:
        return f"{self.id}@{self.version}"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        raw = json.loads(text)
        for key in ("labels", "mean", "std"):
            raw[key] = tuple(raw[key])
        raw.setdefault("linear_head", raw.get("head_hidden", 0) == 0)  # written before the field existed
        if raw.get("batch_sizes") is not None:
            raw["batch_sizes"] = tuple(raw["batch_sizes"])
        return cls(**raw)
