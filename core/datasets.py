"""Labelled image data sets uploaded as archives (one folder per class), extracted safely.

Refused: absolute paths, `..`, links, devices and anything that is not a plain file or
folder; more than `max_files` entries; more than `max_total_bytes` once uncompressed (counted
while extracting, not trusted from headers). Every image is decoded; unreadable ones are
listed and left out. At least two classes must keep at least one image.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Iterator

from core.errors import GazerError, InvalidRequest, NotFound, PayloadTooLarge, TooManyFiles
from core.imaging import decode_image
from core.storage import check_name

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class ArchiveLimits:
    """From the settings (infra.settings)."""

    max_files: int
    max_total_bytes: int
    max_image_pixels: int
    max_file_bytes: int = 50 * 1024**2


@dataclass(frozen=True)
class _Entry:
    path: PurePosixPath
    open: object  # () -> binary file object


def _safe_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise InvalidRequest(f"archive entry {name!r} points outside the archive", field="file")
    return path


def _zip_entries(archive: zipfile.ZipFile) -> Iterator[_Entry]:
    for info in archive.infolist():
        path = _safe_path(info.filename)
        mode = (info.external_attr >> 16) & 0o170000
        if mode == 0o120000:
            raise InvalidRequest(f"archive entry {info.filename!r} is a symbolic link", field="file")
        if info.is_dir():
            continue
        if mode not in (0, 0o100000):
            raise InvalidRequest(f"archive entry {info.filename!r} is not a regular file", field="file")
        yield _Entry(path, lambda info=info: archive.open(info))


def _tar_entries(archive: tarfile.TarFile) -> Iterator[_Entry]:
    for member in archive:
        path = _safe_path(member.name)
        if member.issym() or member.islnk():
            raise InvalidRequest(f"archive entry {member.name!r} is a link", field="file")
        if member.isdir():
            continue
        if not member.isfile():
            raise InvalidRequest(f"archive entry {member.name!r} is not a regular file", field="file")
        yield _Entry(path, lambda member=member: archive.extractfile(member))


def _open_archive(blob: bytes) -> tuple[object, Iterator[_Entry]]:
    if blob[:4] == b"PK\x03\x04" or blob[:4] == b"PK\x05\x06":
        try:
            archive = zipfile.ZipFile(io.BytesIO(blob))
        except zipfile.BadZipFile as error:
            raise InvalidRequest(f"the zip archive is corrupt: {error}", field="file") from None
        return archive, _zip_entries(archive)
    if blob[:2] == b"\x1f\x8b":
        try:
            archive = tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz")
        except (tarfile.TarError, OSError, EOFError) as error:
            raise InvalidRequest(f"the .tar.gz archive is corrupt: {error}", field="file") from None
        return archive, _tar_entries(archive)
    raise InvalidRequest("the data set must be a .zip or .tar.gz archive", field="file")


def _read_capped(handle: IO[bytes], cap: int, name: str) -> bytes:
    data = handle.read(cap + 1)
    if len(data) > cap:
        raise PayloadTooLarge(f"archive entry {name!r} is over {cap} bytes uncompressed")
    return data


def _class_and_file(path: PurePosixPath, strip_root: bool) -> tuple[str, str] | None:
    parts = path.parts[1:] if strip_root else path.parts
    if any(part.startswith(".") or part == "__MACOSX" for part in path.parts):
        return None
    if len(parts) != 2:
        return None
    return parts[0], parts[1]


def _strips_one_root(entries: list[_Entry]) -> bool:
    """Whether every class folder sits inside one top folder (`pets/cat/1.png`)."""
    roots = {entry.path.parts[0] for entry in entries if len(entry.path.parts) > 1}
    return len(roots) == 1 and all(len(entry.path.parts) >= 3 for entry in entries
                                   if not entry.path.name.startswith("."))


@dataclass
class _Extracted:
    counts: dict[str, int]
    unreadable: list[dict[str, str]]


def _extract_images(entries: list[_Entry], staging: Path, limits: ArchiveLimits) -> _Extracted:
    """Write each decodable image to staging/<class>/<index><suffix>; list the others."""
    strip_root = _strips_one_root(entries)
    extracted = _Extracted({}, [])
    total = 0
    for entry in entries:
        placed = _class_and_file(entry.path, strip_root)
        if placed is None or PurePosixPath(placed[1]).suffix.lower() not in IMAGE_SUFFIXES:
            continue
        label, filename = placed
        check_name(label, "class")
        with entry.open() as handle:  # type: ignore[operator]
            data = _read_capped(handle, limits.max_file_bytes, str(entry.path))
        total += len(data)
        if total > limits.max_total_bytes:
            raise PayloadTooLarge(f"the archive is over {limits.max_total_bytes} bytes uncompressed")
        try:
            decode_image(data, limits.max_image_pixels)
        except GazerError as error:
            extracted.unreadable.append({"file": str(entry.path), "reason": error.detail})
            continue
        index = extracted.counts.get(label, 0)
        (staging / label).mkdir(exist_ok=True)
        (staging / label / f"{index:06d}{PurePosixPath(filename).suffix.lower()}").write_bytes(data)
        extracted.counts[label] = index + 1
    return extracted


def _check_classes(extracted: _Extracted) -> None:
    if len(extracted.counts) >= 2:
        return
    unread = extracted.unreadable
    listed = f"; {len(unread)} unreadable: {[item['file'] for item in unread][:20]}" if unread else ""
    raise InvalidRequest(f"a data set needs at least 2 classes (folders) with readable images; found "
                         f"{len(extracted.counts)}: {sorted(extracted.counts)}{listed}", field="file")


def ingest_archive(blob: bytes, datasets_dir: Path, name: str | None, limits: ArchiveLimits) -> dict:
    """Extract a class-per-folder archive into a new data set and return its description."""
    archive, entries = _open_archive(blob)
    dataset_id = uuid.uuid4().hex[:12]
    staging = datasets_dir / f".{dataset_id}.partial"
    staging.mkdir(parents=True)
    try:
        with archive:  # type: ignore[attr-defined]
            listed = list(entries)
            if len(listed) > limits.max_files:
                raise TooManyFiles(f"the archive holds {len(listed)} files; the limit is {limits.max_files}")
            extracted = _extract_images(listed, staging, limits)
        _check_classes(extracted)
        counts = extracted.counts
        description = {"id": dataset_id, "name": name or dataset_id, "classes": sorted(counts),
                       "counts": dict(sorted(counts.items())), "images": sum(counts.values()),
                       "unreadable": extracted.unreadable, "created_at": time.time()}
        (staging / "dataset.json").write_text(json.dumps(description, indent=1))
        staging.rename(datasets_dir / dataset_id)
        return description
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _dataset_dir(datasets_dir: Path, dataset_id: str) -> Path:
    if not dataset_id.isalnum():
        raise NotFound(f"no data set {dataset_id!r}")
    folder = datasets_dir / dataset_id
    if not (folder / "dataset.json").exists():
        raise NotFound(f"no data set {dataset_id!r}")
    return folder


def describe_dataset(datasets_dir: Path, dataset_id: str) -> dict:
    return json.loads((_dataset_dir(datasets_dir, dataset_id) / "dataset.json").read_text())


def list_datasets(datasets_dir: Path) -> list[dict]:
    if not datasets_dir.exists():
        return []
    found = [json.loads(path.read_text()) for path in datasets_dir.glob("*/dataset.json")]
    return sorted(found, key=lambda item: item["created_at"], reverse=True)


def delete_dataset(datasets_dir: Path, dataset_id: str) -> None:
    shutil.rmtree(_dataset_dir(datasets_dir, dataset_id))


def dataset_images(datasets_dir: Path, dataset_id: str) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names, [(image path, class index)]) of a stored data set."""
    description = describe_dataset(datasets_dir, dataset_id)
    folder = datasets_dir / dataset_id
    classes = description["classes"]
    items = [(path, index) for index, label in enumerate(classes) for path in sorted((folder / label).iterdir())]
    return classes, items
