"""Wire models for data sets."""

from __future__ import annotations

from pydantic import BaseModel


class Unreadable(BaseModel):
    file: str
    reason: str


class Dataset(BaseModel):
    id: str
    name: str
    classes: list[str]
    counts: dict[str, int]
    images: int
    unreadable: list[Unreadable]
    created_at: float
    owner: str | None = None


class DatasetList(BaseModel):
    data: list[Dataset]
    count: int
