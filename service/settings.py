"""Service settings, read from GAZER_* environment variables."""

from __future__ import annotations

from pydantic import Field, field_validator

from core.names import DEFAULT_MODEL
from core.pipeline import OUTPUTS
from infra.settings import SharedSettings


class Settings(SharedSettings):
    default_model: str = DEFAULT_MODEL
    max_request_bytes: int = 50 * 1024 * 1024
    max_file_bytes: int = 20 * 1024 * 1024
    max_request_pixels: int = 160_000_000  # all images of one request: about 480 MB decoded
    max_files: int = 64
    # Explanations running at once (per model they take turns); others wait this long for a
    # turn, then get 503, so a pile of slow ones cannot hold every worker thread.
    max_concurrent_explanations: int = Field(4, ge=1)
    explain_queue_seconds: float = Field(60.0, gt=0)
    # What explain returns when a request names no `outputs` (JSON, e.g. ["heatmap"]).
    explain_outputs: tuple[str, ...] = ("heatmap", "overlay")

    @field_validator("explain_outputs")
    @classmethod
    def _known_outputs(cls, outputs: tuple[str, ...]) -> tuple[str, ...]:
        unknown = set(outputs) - set(OUTPUTS)
        if not outputs or unknown:
            raise ValueError(f"explain_outputs must be some of {OUTPUTS}, got {outputs}")
        return outputs
