"""Labelled image data sets uploaded as archives (one folder per class), extracted safely.

The archive is read once, as it streams by (core.archives: its paths, entry kinds, entries,
decompressed bytes and time bounded). Its images are staged, then decoded on the shared CPU
pool; unreadable ones are left out, as are images outside the CLASS/IMAGE layout, the first
MAX_UNREADABLE_LISTED of them listed with why. At least two classes must keep at least one
image, and at most `max_classes` class folders are taken (counted before any image is decoded).

A data set's folder holds its description (dataset.json) and, alone in a small file, its owner:
a listing or a quota check reads the owners first, and parses only the descriptions it shows.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from core.archives import Budget, Entry, archive_entries
from core.errors import GazerError, InvalidRequest, NotFound, storage_failure
from core.imaging import declared_pixels, decode_image
from core.parallel import cpu_count, parallel_map
from core.storage import check_name

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class ArchiveLimits:
    """From the settings (infra.settings)."""

    max_files: int
    max_total_bytes: int
    max_image_pixels: int
    max_file_bytes: int = 50 * 1024**2
    max_seconds: float = 600.0
    max_classes: int = 1000


DESCRIPTION = "dataset.json"
OWNER = ".owner"  # the API key id that holds it ("" for none); hidden, so never a class's name
UPLOADED_AS = "uploaded-as.json"  # images are kept as class/NNNNNN.ext; what each was called in the archive
MAX_UNREADABLE_LISTED = 20  # in a description; `unreadable_count` counts them all


def _class_and_file(path: PurePosixPath, strip_root: bool) -> tuple[str, str] | None:
    parts = path.parts[1:] if strip_root else path.parts
    if any(part.startswith(".") or part == "__MACOSX" for part in path.parts):
        return None
    if len(parts) != 2:
        return None
    return parts[0], parts[1]


def _strips_one_root(paths: list[PurePosixPath]) -> bool:
    """Whether every image (`paths`: those _may_be_an_image took) sits inside one top folder, some
    in class folders there (`pets/cat/1.png`): an image beside them (`pets/cover.png`) is then
    outside the layout, not the one image of class `pets` (one top folder as CLASS/IMAGE is a
    single class, never a data set). Other files (`pets/README.txt`) have no say."""
    return len({path.parts[0] for path in paths}) == 1 and any(len(path.parts) == 3 for path in paths)


def _named_as_an_image(path: PurePosixPath) -> bool:
    return (path.suffix.lower() in IMAGE_SUFFIXES
            and not any(part.startswith(".") or part == "__MACOSX" for part in path.parts))


def _may_be_an_image(path: PurePosixPath) -> bool:
    return _named_as_an_image(path) and 2 <= len(path.parts) <= 3


OUTSIDE_THE_LAYOUT = ("outside the layout: an image goes in CLASS/IMAGE, or ROOT/CLASS/IMAGE when every image "
                      "is inside the same ROOT folder")


@dataclass(frozen=True)
class _Staged:
    path: PurePosixPath
    file: Path
    pixels: int  # as its header declares them; 0 where it cannot be read


def _stage(entries: Iterator[Entry], raw: Path, limits: ArchiveLimits, budget: Budget,
           room: Callable[[int], None]) -> tuple[list[_Staged], list[PurePosixPath]]:
    """Stream the archive once (its reads charged to `budget`), and write the entries that
    may be images to `raw`, each once `room(its size)` lets it; and the paths of images too
    deep or too shallow to be in a class folder, which are not read."""
    staged: list[_Staged] = []
    misplaced: list[PurePosixPath] = []
    for entry in entries:
        budget.check()
        if not _may_be_an_image(entry.path):
            if _named_as_an_image(entry.path):
                misplaced.append(entry.path)
            continue
        data = entry.read(limits.max_file_bytes)
        room(len(data))
        file = raw / f"{len(staged):06d}"
        file.write_bytes(data)
        staged.append(_Staged(entry.path, file, declared_pixels(data)[0]))
    return staged, misplaced


@dataclass
class _Extracted:
    counts: dict[str, int]
    unreadable: list[dict[str, str]]  # images left out, the first MAX_UNREADABLE_LISTED
    unreadable_count: int
    uploaded_as: dict[str, str]  # each kept image's `class/file` name -> its path in the archive

    def leave_out(self, path: PurePosixPath, reason: str) -> None:
        if self.unreadable_count < MAX_UNREADABLE_LISTED:
            self.unreadable.append({"file": str(path), "reason": reason})
        self.unreadable_count += 1


def _place_images(staged: list[_Staged], misplaced: list[PurePosixPath], staging: Path, limits: ArchiveLimits,
                  budget: Budget, charge: Callable[[int], None]) -> _Extracted:
    """Decode the candidates on the shared CPU pool, once `charge` has taken what they declare
    (those over max_image_pixels are refused from their headers, and cost nothing); move each
    readable one to staging/<class>/<index><suffix> and list the others, and the images outside
    the layout (`misplaced`, and those that a class folder does not hold directly)."""
    extracted = _Extracted({}, [], 0, {})
    strip_root = _strips_one_root([item.path for item in staged])
    placed = [(item, _class_and_file(item.path, strip_root)) for item in staged]
    for path in misplaced + [item.path for item, where in placed if where is None]:
        extracted.leave_out(path, OUTSIDE_THE_LAYOUT)
    placed = [(item, where) for item, where in placed if where is not None]
    for _, (label, _) in placed:
        try:
            check_name(label, "class folder")
        except InvalidRequest as error:  # named by the field that holds it, as the archive's other faults are
            raise InvalidRequest(error.detail, field="file") from None
        if label in (DESCRIPTION, UPLOADED_AS):
            raise InvalidRequest(f"a class may not be named {label!r}", field="file")
    if (classes := len({label for _, (label, _) in placed})) > limits.max_classes:
        raise InvalidRequest(f"the archive has {classes} class folders; a data set has at most {limits.max_classes} "
                             f"(GAZER_MAX_CLASSES)", field="file")
    charge(sum(item.pixels for item, _ in placed if item.pixels <= limits.max_image_pixels))

    def problem(item: _Staged) -> str | None:
        budget.check()
        try:
            decode_image(item.file.read_bytes(), limits.max_image_pixels)
        except GazerError as error:
            return error.detail
        return None

    # a few at a time: the pool is shared, and a request's decoding queued behind 200 images
    # waited 5 s
    items, reasons, chunk = [item for item, _ in placed], [], cpu_count()
    for start in range(0, len(items), chunk):
        reasons += parallel_map(problem, items[start:start + chunk])
    for (item, (label, filename)), reason in zip(placed, reasons):
        if reason is not None:
            extracted.leave_out(item.path, reason)
            continue
        index = extracted.counts.get(label, 0)
        (staging / label).mkdir(exist_ok=True)
        kept = f"{index:06d}{PurePosixPath(filename).suffix.lower()}"
        item.file.rename(staging / label / kept)
        extracted.uploaded_as[f"{label}/{kept}"] = str(item.path)
        extracted.counts[label] = index + 1
    return extracted


def _check_classes(extracted: _Extracted) -> None:
    if len(extracted.counts) >= 2:
        return
    unread = extracted.unreadable
    listed = f"; {extracted.unreadable_count} left out: {[item['file'] for item in unread]}" if unread else ""
    raise InvalidRequest(f"a data set needs at least 2 classes (folders) with readable images; found "
                         f"{len(extracted.counts)}: {sorted(extracted.counts)}{listed}", field="file")


def ingest_archive(blob: bytes, datasets_dir: Path, name: str | None, limits: ArchiveLimits,
                   owner: str | None = None,
                   admitted: Callable[[], AbstractContextManager[None]] = nullcontext,
                   room: Callable[[int], None] = lambda size: None,
                   charge: Callable[[int], None] = lambda pixels: None) -> dict:
    """Extract a class-per-folder archive into a new data set and return its description.
    `owner`: who may see it (an API key id; None when the service is open). `admitted()` is
    entered around the moment the data set appears (the caller's quota check, under a lock).
    `room(size)` is asked before each file is written (Storage.check_room), and may refuse it.
    `charge(pixels)` is told what the images to decode declare before any is (the client's
    compute), and may refuse them."""
    budget = Budget(limits.max_seconds, limits.max_total_bytes)
    entries = archive_entries(blob, limits.max_files, budget)
    dataset_id = uuid.uuid4().hex[:12]
    staging = datasets_dir / f".{dataset_id}.partial"
    raw = staging / ".raw"
    try:
        raw.mkdir(parents=True)
        staged, misplaced = _stage(entries, raw, limits, budget, room)
        extracted = _place_images(staged, misplaced, staging, limits, budget, charge)
        _check_classes(extracted)
        shutil.rmtree(raw)
        counts = extracted.counts
        description = {"id": dataset_id, "name": name or dataset_id, "classes": sorted(counts),
                       "counts": dict(sorted(counts.items())), "images": sum(counts.values()),
                       "unreadable": extracted.unreadable, "unreadable_count": extracted.unreadable_count,
                       "created_at": time.time(), "owner": owner}
        (staging / DESCRIPTION).write_text(json.dumps(description, indent=1))
        (staging / OWNER).write_text(owner or "")
        (staging / UPLOADED_AS).write_text(json.dumps(extracted.uploaded_as))
        with admitted():
            staging.rename(datasets_dir / dataset_id)
        return description
    except OSError as error:  # the data folder refused a write: a full disk, permissions
        raise storage_failure("could not store the data set", error) from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _unknown(dataset_id: str) -> NotFound:
    return NotFound(f"no data set {dataset_id!r}")


def _dataset_dir(datasets_dir: Path, dataset_id: str) -> Path:
    if not dataset_id.isalnum() or len(dataset_id) > 64:  # a longer name is the OS's ENAMETOOLONG, a 500
        raise _unknown(dataset_id)
    folder = datasets_dir / dataset_id
    if not (folder / DESCRIPTION).exists():
        raise _unknown(dataset_id)
    return folder


def describe_dataset(datasets_dir: Path, dataset_id: str) -> dict:
    try:
        return _description(_dataset_dir(datasets_dir, dataset_id))
    except FileNotFoundError:  # deleted since it was found
        raise _unknown(dataset_id) from None


def _description(folder: Path) -> dict:
    description = json.loads((folder / DESCRIPTION).read_text())
    description.setdefault("unreadable_count", len(description["unreadable"]))  # stored before it was counted
    return description


def _owner(folder: Path) -> str | None:
    """FileNotFoundError once the data set is gone."""
    try:
        return (folder / OWNER).read_text().strip() or None
    except FileNotFoundError:  # stored before the owner had a file of its own
        return _description(folder).get("owner")


def _stored(datasets_dir: Path) -> Iterator[tuple[Path, str | None]]:
    """(folder, owner) of each data set stored whole (not one being written)."""
    for path in datasets_dir.glob("*/" + DESCRIPTION) if datasets_dir.exists() else ():
        if path.parent.name.startswith("."):
            continue
        try:
            yield path.parent, _owner(path.parent)
        except FileNotFoundError:  # deleted meanwhile
            continue


def list_datasets(datasets_dir: Path, visible: Callable[[str | None], bool] = lambda owner: True) -> list[dict]:
    """The descriptions of the data sets whose owner is `visible`, newest first."""
    found = []
    for folder, owner in _stored(datasets_dir):
        if not visible(owner):
            continue
        try:
            found.append(_description(folder))
        except FileNotFoundError:  # deleted meanwhile
            continue
    return sorted(found, key=lambda item: item["created_at"], reverse=True)


def count_owned(datasets_dir: Path, owner: str) -> int:
    return sum(1 for _, held_by in _stored(datasets_dir) if held_by == owner)


def delete_dataset(datasets_dir: Path, dataset_id: str,
                   admitted: Callable[[], AbstractContextManager[None]] = nullcontext,
                   remove: Callable[[Path], None] = shutil.rmtree) -> None:
    """Renamed aside inside `admitted()` (the caller's check that no job reads it, under a lock),
    which makes it gone at once for every lookup, listing and other delete; then `remove`d, which
    takes seconds for thousands of files (a caller may do it later: an interrupted removal is
    swept at the next start, Storage.partial_folders)."""
    folder = _dataset_dir(datasets_dir, dataset_id)
    aside = datasets_dir / f".deleting-{dataset_id}-{uuid.uuid4().hex}"
    with admitted():
        try:
            folder.rename(aside)
        except FileNotFoundError:  # another delete took it first
            raise _unknown(dataset_id) from None
    remove(aside)


def uploaded_names(datasets_dir: Path, dataset_id: str) -> dict[str, str]:
    """Each image's `class/file` name -> its path in the uploaded archive (empty for a data set
    stored before the names were kept)."""
    names = _dataset_dir(datasets_dir, dataset_id) / UPLOADED_AS
    return json.loads(names.read_text()) if names.exists() else {}


def dataset_images(datasets_dir: Path, dataset_id: str) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names, [(image path, class index)]) of a stored data set."""
    description = describe_dataset(datasets_dir, dataset_id)
    folder = datasets_dir / dataset_id
    classes = description["classes"]
    items = [(path, index) for index, label in enumerate(classes) for path in sorted((folder / label).iterdir())]
    return classes, items
