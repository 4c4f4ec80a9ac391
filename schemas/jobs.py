"""Wire models for jobs: what clients may submit (validated before anything is queued) and
what they read back."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.jobs import STATES
from core.training.config import ATTENTION_TYPES, OPTIMIZERS, STRATEGIES
from core.visualize.activation_max import PARAMETERIZATIONS


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AugmentationSpec(Strict):
    flip: bool = True
    rotation: float = Field(10.0, ge=0, le=180, description="degrees, +-")
    zoom: float = Field(0.1, ge=0, lt=1, description="scale in [1 - zoom, 1 + zoom]")
    shear: float = Field(5.0, ge=0, le=45, description="degrees, +-")
    color_jitter: float = Field(0.1, ge=0, le=1, description="brightness, contrast, saturation, +-")


class HeadSpec(Strict):
    hidden: int = Field(0, ge=0, le=4096, description="hidden units before the classifier; 0 = linear head")
    dropout: float = Field(0.2, ge=0, lt=1)


class FineTuneRequest(Strict):
    base_model: str = "efficientnet_lite0"
    dataset_id: str
    output_model: str = Field(description="name of the new model; each run adds a version")
    strategy: Literal[STRATEGIES] = "fine_tune"  # type: ignore[valid-type]
    epochs: int = Field(5, ge=1, le=500)
    batch_size: int = Field(16, ge=1, le=512)
    optimizer: Literal[OPTIMIZERS] = "adamw"  # type: ignore[valid-type]
    lr: float = Field(1e-3, gt=0, le=10)
    backbone_lr: float = Field(1e-4, ge=0, le=10, description="learning rate of unfrozen pretrained layers")
    weight_decay: float = Field(1e-4, ge=0, le=1)
    head: HeadSpec = HeadSpec()
    augmentation: AugmentationSpec = AugmentationSpec()
    input_size: int | None = Field(None, ge=32, le=1024, description="train and serve at this size")
    val_fraction: float = Field(0.2, gt=0, lt=1)
    early_stopping_patience: int = Field(3, ge=1, le=500)
    seed: int = 0
    unfreeze_blocks: int = Field(5, ge=1, le=100, description="fine_tune: top blocks unfrozen after epoch 1")
    attention: Literal[ATTENTION_TYPES] = "none"  # type: ignore[valid-type]
    attention_stages: int = Field(1, ge=1, le=7)


class MaximizationTarget(Strict):
    class_: int | None = Field(None, alias="class", ge=0)
    classes: list[int] | None = Field(None, min_length=1, max_length=64)
    layer: str | None = None
    channels: list[int] | None = Field(None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def one_kind(self) -> "MaximizationTarget":
        kinds = [self.class_ is not None, self.classes is not None, self.layer is not None]
        if sum(kinds) != 1:
            raise ValueError('give {"class": N}, {"classes": [...]} or {"layer": NAME, "channels": [...]}')
        if self.layer is not None and not self.channels:
            raise ValueError("a layer target needs channels")
        return self

    def as_params(self) -> dict[str, Any]:
        if self.class_ is not None:
            return {"class": self.class_}
        if self.classes is not None:
            return {"classes": self.classes}
        return {"layer": self.layer, "channels": self.channels}


class ActivationMaximizationRequest(Strict):
    model: str = "efficientnet_lite0"
    target: MaximizationTarget
    steps: int = Field(200, ge=1, le=10000)
    lr: float = Field(0.05, gt=0, le=10)
    l2: float = Field(1e-3, ge=0, le=100)
    tv: float = Field(1e-3, ge=0, le=100)
    blur_sigma: float = Field(0.5, ge=0, le=20)
    blur_every: int = Field(4, ge=0, le=10000)
    jitter: int = Field(8, ge=0, le=64)
    size: int | None = Field(None, ge=32, le=512)
    seed: int = 0
    parameterization: Literal[PARAMETERIZATIONS] = "fft"  # type: ignore[valid-type]

    def as_params(self) -> dict[str, Any]:
        return {**self.model_dump(exclude={"target"}), "target": self.target.as_params()}


class Job(BaseModel):
    id: str
    type: str
    state: Literal[STATES]  # type: ignore[valid-type]
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    params: dict[str, Any]
    attempts: int
    cancel_requested: bool
    created_at: float
    started_at: float | None
    finished_at: float | None


class JobList(BaseModel):
    data: list[Job]
    count: int
