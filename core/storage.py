"""Where artifacts live: one local directory (a shared volume in docker-compose)."""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from core.errors import InvalidRequest, StorageFull
from core.memory import describe

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(name: str, what: str) -> str:
    """Names that become folder names: letters, digits, `_`, `-`, `.`; no leading dot."""
    if not _SAFE_NAME.fullmatch(name) or ".." in name:
        raise InvalidRequest(f"{what} {name!r} must be 1-64 letters, digits, '_', '-' or '.', "
                             f"starting with a letter or digit", field=what)
    return name


@dataclass(frozen=True)
class Storage:
    """`min_free_bytes`: the free space that new uploads, data sets and jobs must leave (check_room)."""

    root: Path
    min_free_bytes: int = 0

    def free_bytes(self) -> int:
        """Free space on the file system that holds the data folder (or will, before it exists)."""
        folder = self.root.absolute()
        while not folder.exists():
            folder = folder.parent
        return shutil.disk_usage(folder).free

    def check_room(self, incoming: int = 0) -> None:
        """Refuses (507) what would leave less than `min_free_bytes` free, counting `incoming` bytes."""
        free = self.free_bytes()
        if free - incoming < self.min_free_bytes:
            raise StorageFull(f"the data folder has {describe(free)} free, and keeps at least "
                              f"{describe(self.min_free_bytes)} (GAZER_MIN_FREE_DISK_BYTES) for what is running: "
                              f"nothing new is stored until an operator frees space"
                              + (f" ({describe(incoming)} were asked for)" if incoming else ""))

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

    @property
    def upload_lock(self) -> Path:
        return self.root / "upload.lock"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def folders(self) -> list[Path]:
        """Where it writes: the data folder and its folders."""
        return [self.root, self.onnx_cache, self.datasets, self.models, self.redis, self.artifacts]

    def job_artifacts(self, job_id: str) -> Path:
        return self.artifacts / job_id

    def partial_folders(self) -> list[Path]:
        """What an interrupted ingest, save or delete leaves: `.<id>.partial` and `.deleting-*`
        data sets and a model's `.staging-*` and `.deleting-*` folders."""
        return [*self.datasets.glob(".*.partial"), *self.datasets.glob(".deleting-*"),
                *self.models.glob("*/.staging-*"), *self.models.glob("*/.deleting-*")]

    def sweep_partial_folders(self, older_than_seconds: float = 3600.0) -> list[Path]:
        """Remove partial folders not touched for `older_than_seconds`: old enough that no live
        process (this one or another sharing the folder) is still writing them. Those set aside
        to be deleted (`.deleting-*`) go whatever their age: nothing writes them, and a removal
        cut short leaves them looking fresh (it touches them as it goes)."""
        now = time.time()
        swept = []
        for folder in self.partial_folders():
            try:
                if not folder.name.startswith(".deleting-") and now - folder.stat().st_mtime < older_than_seconds:
                    continue
                shutil.rmtree(folder)
            except FileNotFoundError:  # another process swept it first
                continue
            swept.append(folder)
        return swept
