"""The API key file (`GAZER_API_KEYS`): one JSON document listing each key's id, the SHA-256 of
the key, its scopes and a label. The key itself is shown once, when it is made, and never
stored. Keys are 32 random bytes, so a plain SHA-256 is enough: nothing to guess slowly."""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import os
import secrets
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

Scope = Literal["predict", "jobs", "metrics", "admin"]
SCOPES: tuple[str, ...] = ("predict", "jobs", "metrics", "admin")
PREFIX = "gz_"


class KeyRecord(BaseModel):
    id: str = Field(pattern=r"^[0-9a-f]{8}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: list[Scope] = Field(min_length=1)
    label: str = ""
    created_at: float = 0.0

    def grants(self, scope: str) -> bool:
        """`admin` holds every scope."""
        return scope in self.scopes or "admin" in self.scopes


class KeyFile(BaseModel):
    keys: list[KeyRecord] = []

    @model_validator(mode="after")
    def _one_record_per_id(self) -> "KeyFile":
        """An id is its key's owner: two records of one id (a hand-merged file, a corrected record
        appended) shared what they own, or the first alone counted."""
        seen: set[str] = set()
        for record in self.keys:
            if record.id in seen:
                raise ValueError(f"key id {record.id} appears twice; each key has one record")
            seen.add(record.id)
        return self


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(key: str) -> str | None:
    """The public id inside a key (`gz_<id>_<secret>`), or None when it is not shaped like one."""
    parts = key.split("_")
    if len(parts) != 3 or parts[0] + "_" != PREFIX or len(parts[1]) != 8:
        return None
    return parts[1]


def why_unreadable(error: OSError | ValueError) -> str:
    """One line on why read_key_file failed."""
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return f"{first['msg']}{f' at {where}' if where else ''}"
    return (error.strerror if isinstance(error, OSError) else None) or str(error).splitlines()[0]


def read_key_file(path: Path, missing_ok: bool = True) -> KeyFile:
    """The keys; none where the file is missing and `missing_ok`. OSError or ValueError where
    it cannot be read."""
    if missing_ok and not path.exists():
        return KeyFile()
    return KeyFile.model_validate_json(path.read_text())


def find_key(keys: KeyFile, key: str) -> KeyRecord | None:
    """The record of a presented key, compared in constant time."""
    wanted = key_id(key)
    if wanted is None:
        return None
    presented = digest(key)
    for record in keys.keys:
        if record.id == wanted and hmac.compare_digest(record.sha256, presented):
            return record
    return None


@contextmanager
def _editing(path: Path) -> Iterator[KeyFile]:
    """The key file to change in place: locked against another `gazer keys` run meanwhile, then
    written aside and renamed over the file (mode 0600), so the service never reads half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        keys = read_key_file(path)
        yield keys
        staged = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        descriptor = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(keys.model_dump_json(indent=1))
        os.replace(staged, path)


def create_key(path: Path, scopes: list[str], label: str = "") -> tuple[str, KeyRecord]:
    """A new key, added to the file. Returns the key, which is not kept anywhere."""
    with _editing(path) as keys:
        taken = {record.id for record in keys.keys}
        identifier = secrets.token_hex(4)
        while identifier in taken:
            identifier = secrets.token_hex(4)
        key = f"{PREFIX}{identifier}_{secrets.token_urlsafe(32).replace('_', '-')}"
        record = KeyRecord(id=identifier, sha256=digest(key), scopes=sorted(set(scopes), key=SCOPES.index),
                           label=label, created_at=time.time())
        keys.keys.append(record)
    return key, record


def revoke_key(path: Path, identifier: str) -> KeyRecord:
    """Remove the key with this id from the file (the service refuses it from its next request);
    KeyError when the file has none."""
    with _editing(path) as keys:
        found = [record for record in keys.keys if record.id == identifier]
        if not found:
            raise KeyError(identifier)
        keys.keys = [record for record in keys.keys if record.id != identifier]
    return found[0]
