"""The explain answer's wire models with the base64 PNGs and the raw map decoded on access."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import numpy as np
from pydantic import field_validator

from schemas import models as wire
from schemas.jobs import Job


class Explanation(wire.Explanation):
    @field_validator("heatmap_png", "overlay")
    @classmethod
    def _base64(cls, value: str | None) -> str | None:
        """Refused when read, as the rest of a malformed answer is, rather than when the file is taken."""
        if value is not None:
            try:
                base64.b64decode(value, validate=True)
            except binascii.Error as error:
                raise ValueError(f"not base64 ({error})") from None
        return value

    @property
    def heatmap(self) -> bytes | None:
        """The heatmap PNG file's bytes (asked for with outputs=heatmap, a default)."""
        return base64.b64decode(self.heatmap_png) if self.heatmap_png is not None else None

    @property
    def heatmap_image(self) -> bytes | None:
        """`heatmap`, named as `overlay_image` is."""
        return self.heatmap

    @property
    def overlay_image(self) -> bytes | None:
        """The overlay file's bytes, in `overlay_format` (asked for with outputs=overlay, a default)."""
        return base64.b64decode(self.overlay) if self.overlay is not None else None

    @property
    def map_array(self) -> np.ndarray | None:
        """The raw [0, 1] map as float32 (asked for with outputs=map)."""
        return np.asarray(self.map, dtype=np.float32) if self.map is not None else None


class ExplainResult(wire.ExplainResult):
    explanation: Explanation


class ExplainResponse(wire.ExplainResponse):
    results: list[ExplainResult]


@dataclass(frozen=True)
class JobEvent:
    """One server-sent event of GET /v1/jobs/{id}/events: `progress` while the job runs, `end`
    with the final record."""

    kind: str
    job: Job
