"""Wire models for data sets."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Unreadable(BaseModel):
    file: str
    reason: str


class Dataset(BaseModel):
    id: str
    name: str
    classes: list[str]
    counts: dict[str, int]
    images: int
    unreadable: list[Unreadable] = Field(description="the first files left out (at most 20), each with why")
    # a server from before it was counted listed them all
    unreadable_count: int = Field(default_factory=lambda data: len(data["unreadable"]),
                                  description="image files left out: unreadable, or outside the "
                                              "CLASS/IMAGE layout")
    created_at: float
    owner: str | None = None


class DatasetList(BaseModel):
    data: list[Dataset]
    count: int
