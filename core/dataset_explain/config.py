"""What an explain-dataset run is asked to do: every name, default and bound, once (the wire
model in schemas/jobs.py is generated from these)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.names import DEFAULT_MODEL
from core.params import param

MAX_OPTIONS = 16


@dataclass(frozen=True)
class ExplainDatasetConfig:
    dataset_id: str = param(max_length=64, doc="a data set uploaded to /v1/datasets")
    model: str = param(DEFAULT_MODEL, max_length=80, doc="NAME or NAME@VERSION")
    method: str | None = param(None, max_length=64, doc="an explanation method the model answers "
                                                           "(GET /v1/models/{model} lists them); default the "
                                                           "model's own: gradcam, or occlusion for a model "
                                                           "served from ONNX alone")
    options: dict[str, Any] = param(factory=dict, max_length=MAX_OPTIONS,
                                    doc="the method's own options, as for /explain: steps, baseline, samples, "
                                        "noise, window, stride, masks, seed, cells, p")
    layer: str | None = param(None, max_length=200,
                              doc="the layer to explain, for a method that takes one; default the model's CAM layer")
    faithfulness: bool = param(False, doc="also score each map by deletion and insertion")
    batch_size: int = param(8, ge=1, le=64, doc="images explained together")
