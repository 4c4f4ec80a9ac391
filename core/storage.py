"""Where artifacts live: one local directory (a shared volume in docker-compose)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from core.errors import InvalidRequest

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(name: str, what: str) -> str:
    """Names that become folder names: letters, digits, `_`, `-`, `.`; no leading dot."""
    if not _SAFE_NAME.fullmatch(name) or ".." in name:
        raise InvalidRequest(f"{what} {name!r} must be 1-64 letters, digits, '_', '-' or '.', "
                             f"starting with a letter or digit", field=what)
    return name


@dataclass(frozen=True)
class Storage:
    root: Path

    @property
    def onnx_cache(self) -> Path:
        return self.root / "onnx"

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def redis(self) -> Path:
        return self.root / "redis"

    def job_artifacts(self, job_id: str) -> Path:
        return self.root / "artifacts" / job_id
