"""Model versions on disk (fine-tuned or uploaded): models/<name>/<version>/{weights.safetensors,
model.onnx, spec.json, metrics.json}; an ONNX-only upload has no weights. A version folder appears
whole (written aside, checked, then renamed) and disappears whole (renamed aside, then removed).
models/<name>/default holds a pinned version number, if one is pinned."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from core.errors import InvalidRequest, ModelNotReady, UnknownModel, storage_failure
from core.models.catalog import file_digest
from core.models.refs import versions
from core.models.onnx_export import export_onnx
from core.models.spec import ModelSpec
from core.storage import check_name

WEIGHTS, ONNX, SPEC, METRICS, PIN = "weights.safetensors", "model.onnx", "spec.json", "metrics.json", "default"
OWNER = "owner"
UPLOADING = "uploading"  # uploading-<id>: one per upload under the name while it runs
UPLOAD_MARK_SECONDS = 3600
# The highest version number ever published: a deleted version's number is never given again,
# so `name@N` always means the same model (to clients, and to caches in other processes).
LAST = "last"
_PUBLISH_ATTEMPTS = 100
log = logging.getLogger(__name__)


def version_dir(models_dir: Path, name: str, version: int) -> Path:
    return models_dir / name / str(version)


def write_network(staging: Path, spec: ModelSpec, network: nn.Module,
                  verify: Callable[[Path], None] | None = None) -> str:
    """WEIGHTS and ONNX of `network` into `staging`, and the digest of the weights; `verify(onnx_file)`
    runs on the export and may raise to keep the version out."""
    network.cpu().eval()
    save_file({key: value.contiguous() for key, value in network.state_dict().items()}, str(staging / WEIGHTS))
    try:
        export_onnx(network, spec.input_size, staging / ONNX)
    except (RuntimeError, ValueError, TypeError, torch.onnx.errors.OnnxExporterError) as error:
        raise InvalidRequest(f"the network cannot be exported to ONNX at {spec.input_size}x{spec.input_size}: "
                             f"{str(error)[:300]}", field="input_size") from None
    if verify is not None:
        verify(staging / ONNX)
    return file_digest(staging / WEIGHTS)


def save_version(models_dir: Path, spec: ModelSpec, network: nn.Module, metrics: dict,
                 verify: Callable[[Path], None] | None = None) -> ModelSpec:
    """Write a new version of `spec.id` and return its spec (version number and digest set)."""
    return _publish(models_dir, spec.id, metrics, lambda staging: (spec, write_network(staging, spec, network, verify)))


def save_checked_version(models_dir: Path, name: str, check: Callable[[Path], ModelSpec]) -> ModelSpec:
    """A new version of `name` whose WEIGHTS and ONNX `check(staging)` writes (write_network, in a
    process of its own), returning their spec."""
    def write(staging: Path) -> tuple[ModelSpec, str]:
        spec = check(staging)
        return spec, file_digest(staging / WEIGHTS)

    return _publish(models_dir, name, {}, write)


def save_onnx_version(models_dir: Path, spec: ModelSpec, onnx_model: bytes) -> ModelSpec:
    """A new version served from an ONNX file alone (no torch network)."""
    def write(staging: Path) -> tuple[ModelSpec, str]:
        (staging / ONNX).write_bytes(onnx_model)
        return spec, file_digest(staging / ONNX)

    return _publish(models_dir, spec.id, {}, write)


def _publish(models_dir: Path, name: str, metrics: dict, write: Callable[[Path], tuple[ModelSpec, str]]) -> ModelSpec:
    """`write(staging)`: the version's files into `staging`; their spec and digest."""
    staging = models_dir / name / f".staging-{uuid.uuid4().hex}"
    try:
        (models_dir / name).mkdir(parents=True, exist_ok=True)
        staging.mkdir()
        spec, digest = write(staging)
        (staging / METRICS).write_text(json.dumps(metrics, indent=1))
        for _ in range(_PUBLISH_ATTEMPTS):
            version = max(versions(models_dir, name) + [_last_version(models_dir, name)]) + 1
            final = replace(spec, version=version, weights_digest=digest)
            (staging / SPEC).write_text(final.to_json())
            _fsync_folder(staging)
            try:
                staging.rename(version_dir(models_dir, name, version))
            except OSError as error:
                if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                continue  # another job took this number first
            _fsync(models_dir / name)
            _record_last(models_dir, name, version)
            return final
        raise ModelNotReady(f"could not number a new version of {name!r}: {_PUBLISH_ATTEMPTS} tries collided")
    except OSError as error:
        raise storage_failure(f"could not save a version of {name!r}", error) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_folder(folder: Path) -> None:
    """Its files and then the folder itself, so that a rename publishes only what is on disk."""
    for path in folder.iterdir():
        _fsync(path)
    _fsync(folder)


def _last_version(models_dir: Path, name: str) -> int:
    try:
        text = (models_dir / name / LAST).read_text().strip()
    except FileNotFoundError:
        return 0
    return int(text) if text.isdigit() else 0


def _record_last(models_dir: Path, name: str, version: int) -> None:
    """The high-water mark that keeps a deleted version's number from coming back. The version
    is already published when this runs, so failing here is logged, not raised."""
    try:
        _write_atomically(models_dir / name / LAST, str(version))
    except OSError as error:
        log.warning("model %s@%d published, but its high-water mark was not saved: %s", name, version, error)


def _write_atomically(path: Path, text: str) -> None:
    staged = path.parent / f".{path.name}-{uuid.uuid4().hex}"
    staged.write_text(text)
    os.replace(staged, path)


def delete_version(models_dir: Path, name: str, version: int) -> None:
    folder = version_dir(models_dir, name, version)
    aside = models_dir / name / f".deleting-{version}-{uuid.uuid4().hex}"
    try:
        folder.rename(aside)  # gone from listings at once
    except FileNotFoundError:
        raise UnknownModel(f"model {name!r} has no version {version}") from None
    shutil.rmtree(aside)
    if pinned_version(models_dir, name) == version:
        unpin(models_dir, name)


def name_owner(models_dir: Path, name: str) -> str | None:
    """The API key that first published under `name` (None: open service, or built-in)."""
    try:
        return (models_dir / name / OWNER).read_text().strip() or None
    except FileNotFoundError:
        return None


def claim_name(models_dir: Path, name: str, owner: str) -> str:
    """Records `owner` as the name's owner unless it has one; returns the owner it has now."""
    check_name(name, "model name")
    (models_dir / name).mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(models_dir / name / OWNER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return name_owner(models_dir, name) or owner
    with os.fdopen(descriptor, "w") as handle:
        handle.write(owner)
    return owner


def start_upload(models_dir: Path, name: str) -> Path | None:
    """Marks `name` while this upload under it runs (its claim has no version and no job yet),
    with a mark of its own; a name with no folder (no claim was made: an open service, a built-in
    name) is left alone."""
    if not (models_dir / name).is_dir():
        return None
    mark = models_dir / name / f"{UPLOADING}-{uuid.uuid4().hex}"
    mark.touch()
    return mark


def end_upload(mark: Path | None) -> None:
    if mark is not None:
        mark.unlink(missing_ok=True)


def upload_running(models_dir: Path, name: str) -> bool:
    """Whether an upload under `name` runs now (a mark left by a crash counts for an hour)."""
    now = time.time()
    for mark in (models_dir / name).glob(f"{UPLOADING}-*"):
        try:
            if now - mark.stat().st_mtime < UPLOAD_MARK_SECONDS:
                return True
        except FileNotFoundError:  # that upload ended just now
            continue
    return False


def release_name(models_dir: Path, name: str) -> None:
    """Forgets the owner of a name with no version (a claim nothing was published under), and
    the name's folder when nothing else is left in it (`last` stays: numbers are not reused)."""
    if versions(models_dir, name):
        return
    (models_dir / name / OWNER).unlink(missing_ok=True)
    try:
        (models_dir / name).rmdir()
    except OSError:  # not empty, or gone already
        pass


def names_owned(models_dir: Path, owner: str) -> list[str]:
    """Names `owner` has claimed, published under or not yet."""
    if not models_dir.is_dir():
        return []
    return sorted(entry.name for entry in models_dir.iterdir() if name_owner(models_dir, entry.name) == owner)


def pinned_version(models_dir: Path, name: str) -> int | None:
    try:
        text = (models_dir / name / PIN).read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def pin_version(models_dir: Path, name: str, version: int) -> None:
    _write_atomically(models_dir / name / PIN, str(version))


def unpin(models_dir: Path, name: str) -> None:
    (models_dir / name / PIN).unlink(missing_ok=True)


def read_spec(models_dir: Path, name: str, version: int) -> ModelSpec:
    try:
        return ModelSpec.from_json((version_dir(models_dir, name, version) / SPEC).read_text())
    except FileNotFoundError:  # deleted since it was listed
        raise UnknownModel(f"model {name!r} has no version {version}") from None


def load_weights(models_dir: Path, spec: ModelSpec, network: nn.Module) -> nn.Module:
    network.load_state_dict(load_file(str(version_dir(models_dir, spec.id, spec.version) / WEIGHTS)))
    return network.eval()
