"""Wire models for models, predictions and explanations."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from core.names import DEFAULT_MODEL  # noqa: F401  (the clients' default, from its one place)


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


class Explanation(BaseModel):
    method: str
    target: Prediction
    layer: str | None = Field(description="the layer explained; null for input-gradient methods")
    heatmap_png: str | None = Field(description="base64 8-bit grey PNG, the uploaded image's size; "
                                                "255 = most important, 0 outside the model's centre crop")
    overlay_png: str | None = Field(description="base64 PNG: the colour-mapped heatmap blended over the image")
    map: list[list[float]] | None = Field(None, description="with outputs=map: the raw [0, 1] map at the "
                                                             "explained layer's or the input's resolution")
    faithfulness: FaithfulnessScores | None = Field(None, description="with faithfulness=true: deletion and "
                                                                      "insertion (Petsiuk et al. 2018)")
    timings_ms: dict[str, float]


class ExplainResult(BaseModel):
    predictions: list[Prediction]
    explanation: Explanation


class ExplainResponse(BaseModel):
    model: ModelRef
    results: list[ExplainResult]


class Preprocessing(BaseModel):
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
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


class ModelDetail(ModelSummary):
    default_layer: str
    layers: list[str]
    methods: list[str]
    attention: list[str]
    preprocessing: Preprocessing
    weights_digest: str
    status: str


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

    version: int = Field(ge=1, le=2**31 - 1)
