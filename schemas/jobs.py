"""Wire models for jobs: what clients may submit (validated before anything is queued) and
what they read back. The submissions are generated from the core's configs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from core.dataset_explain.config import ExplainDatasetConfig
from core.jobs import STATES, TERMINAL
from core.names import MAX_INDEX
from core.sweeps import SweepConfig
from core.training.config import FineTuneConfig
from core.visualize.config import MaximizationConfig, Target
from schemas.params import NOT_A_BOOLEAN, wire_model

FineTuneRequest = wire_model(FineTuneConfig, "FineTuneRequest")
SweepRequest = wire_model(SweepConfig, "SweepRequest", overrides={"base": FineTuneRequest})
Index = Annotated[int, Field(ge=0, lt=MAX_INDEX)]
OptionName = Annotated[str, Field(max_length=64)]
ExplainDatasetRequest = wire_model(ExplainDatasetConfig, "ExplainDatasetRequest",
                                   overrides={"options": dict[OptionName, bool | int | float | str]})


class MaximizationTarget(wire_model(Target, "TargetFields",  # type: ignore[misc]
                                    overrides={"classes": tuple[Index, ...], "channels": tuple[Index, ...]})):
    class_: Annotated[Index, NOT_A_BOOLEAN] | None = Field(None, alias="class",
                                                           description='shorthand for "classes": [N]')

    @model_validator(mode="after")
    def one_kind(self) -> "MaximizationTarget":
        kinds = [self.class_ is not None, bool(self.classes), self.layer is not None]
        if sum(kinds) != 1:
            raise ValueError('give {"class": N}, {"classes": [...]} or {"layer": NAME, "channels": [...]}')
        if self.layer is not None and not self.channels:
            raise ValueError("a layer target needs channels")
        return self

    def as_params(self) -> dict[str, Any]:
        """The core's Target fields (the shorthand unfolded)."""
        classes = [self.class_] if self.class_ is not None else list(self.classes)
        return {"classes": classes, "layer": self.layer, "channels": list(self.channels)}


class ActivationMaximizationRequest(wire_model(MaximizationConfig, "MaximizationFields",  # type: ignore[misc]
                                               overrides={"target": MaximizationTarget})):
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
    parent: str | None = None
    attempts: int
    cancel_requested: bool
    created_at: float
    started_at: float | None
    finished_at: float | None

    @property
    def finished(self) -> bool:
        """Succeeded, failed, cancelled or pruned: the record will not change again."""
        return self.state in TERMINAL


class JobList(BaseModel):
    data: list[Job]
    count: int
    next: str | None = None  # where the page is full: the `before` of the next page, which may be empty


class Artifact(BaseModel):
    name: str
    url: str
    bytes: int


class ArtifactList(BaseModel):
    data: list[Artifact]
    count: int


def artifact_url(job_id: str, name: str) -> str:
    """Where clients fetch a job's artifact (the route in service/routers/jobs.py)."""
    return f"/v1/jobs/{job_id}/artifacts/{name}"
