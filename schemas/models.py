"""Wire models for models, predictions and explanations."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.names import DEFAULT_MODEL  # noqa: F401  (the clients' default, from its one place)
from core.names import FLAT_GATE_RANGE, PICTURE_SIDE
from schemas.params import NOT_A_BOOLEAN


class ModelRef(BaseModel):
    id: str
    version: int


class Prediction(BaseModel):
    index: int
    label: str
    probability: float


class PredictResult(BaseModel):
    predictions: list[Prediction]


class PredictResponse(BaseModel):
    model: ModelRef
    results: list[PredictResult]


class FaithfulnessScores(BaseModel):
    deletion: float = Field(description="area under p(target) as the map's top pixels are blacked out, a "
                                        "1/steps slice at a time; lower is better")
    insertion: float = Field(description="area under p(target) as they are restored into a blurred copy; "
                                         "higher is better")
    steps: int


class GateRange(BaseModel):
    min: float = Field(description="the smallest gate value over the image (a multiplier of the features)")
    max: float
    mean: float
    flat: bool = Field(description=f"max - min < {FLAT_GATE_RANGE}: the gate barely varies, and the map is "
                                   "all zeros instead of stretched noise")


class CropRegion(BaseModel):
    """The part of the heatmap's pixels the model saw (its centre crop, or the whole image with
    resize=stretch): right and bottom exclusive. The heatmap is 0 outside it, where nothing was
    explained, and the overlay leaves the image untinted."""
    left: int
    top: int
    right: int
    bottom: int


class Explanation(BaseModel):
    method: str
    target: Prediction
    layer: str | None = Field(description="the layer explained; null for methods that explain the input's pixels")
    heatmap_png: str | None = Field(description="base64 8-bit grey PNG, the uploaded image's size (a large JPEG's: "
                                                "the 1/2, 1/4 or 1/8 of it that it was decoded at, at least "
                                                f"{PICTURE_SIDE} px on its longer side); 255 = most important, 0 "
                                                "outside the model's centre crop")
    overlay: str | None = Field(description="base64 image in `overlay_format`: the colour-mapped heatmap blended "
                                            "over the uploaded image, the heatmap's size")
    overlay_format: Literal["jpeg", "png", "webp"] | None = Field(description="the overlay's format; null without one")
    map: list[list[float]] | None = Field(None, description="with outputs=map: the raw [0, 1] map at the "
                                                             "explained layer's or the input's resolution")
    faithfulness: FaithfulnessScores | None = Field(None, description="with faithfulness=true: deletion and "
                                                                      "insertion (Petsiuk et al. 2018); null for "
                                                                      "a flat map, which ranks no pixel first")
    timings_ms: dict[str, float]
    crop: CropRegion | None = Field(None, description="where in the heatmap's (and overlay's) pixels the model "
                                                      "looked (absent from services before it)")
    flat: bool = Field(False, description="the map is one value everywhere, so all zeros: the method found "
                                          "nothing to point at for this class at this layer")
    gate: GateRange | None = Field(None, description="attention maps: the raw gate's range over the image, before "
                                                     "the map is scaled to [0, 1] (residual gates: 1 = unchanged, "
                                                     "up to 2; sigmoid gates: 0 to 1); null for other methods")


class ExplainResult(BaseModel):
    predictions: list[Prediction]
    explanation: Explanation


class ExplainResponse(BaseModel):
    model: ModelRef
    results: list[ExplainResult]


class Preprocessing(BaseModel):
    mean: tuple[float, float, float] = Field(description="for pixels in 0..1, as an upload gives them")
    std: tuple[float, float, float] = Field(description="for pixels in 0..1, as an upload gives them")
    resize_short_side_to: int
    center_crop: int
    interpolation: str


class ModelSummary(BaseModel):
    id: str
    version: int
    architecture: str
    input_size: int
    num_classes: int
    description: str
    builtin: bool = Field(False, description="a built-in model: it has one version, which cannot be pinned "
                                             "or deleted")


class ModelDetail(ModelSummary):
    default_layer: str
    methods: list[str]
    layer_methods: list[str] = Field(description="those of `methods` that explain at a layer, and so take `layer`")
    method_options: dict[str, list[str]] = Field(
        default_factory=dict, description="the options each of `methods` takes (steps, baseline, ...); "
                                          "an option a method does not take is a 422")
    default_method: str  # what explain runs when a request names no method
    forward_cost: float = Field(1.0, description="what one forward pass of this model counts for in the explain "
                                                 "budget, in forward passes of EfficientNet-Lite0 at 224 (at least "
                                                 "1): its FLOPs over Lite0's, or for an uploaded ONNX file the most "
                                                 "an image took on its check's runs over Lite0's time, where more")
    attention: list[str]
    preprocessing: Preprocessing
    weights_digest: str
    status: str
    # the long lists last, so that the answer's first lines say what the model is
    layers: list[str]
    labels: list[str] = Field(description="the class names, by index: what `target` counts")


class ModelList(BaseModel):
    data: list[ModelSummary]
    count: int


class Version(BaseModel):
    version: int
    architecture: str
    description: str
    default: bool = Field(description="what the plain name resolves to")
    state: str = Field(description="ready, failed or not_loaded")


class VersionList(BaseModel):
    data: list[Version]
    count: int
    default: int
    pinned: int | None


class PinRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Annotated[int, Field(ge=1, le=2**31 - 1), NOT_A_BOOLEAN]
