"""Labelled image data sets uploaded as archives (one folder per class), extracted safely.

Refused: absolute paths, `..`, links, devices and anything that is not a plain file or
folder; encrypted entries and compression methods other than stored and deflated; damaged
archives; more than `max_files` entries and more than `max_total_bytes` decompressed, both
counted while the archive streams by, before anything is kept; more than `max_seconds` in all;
a path over MAX_PATH_BYTES.
Every byte decompressed counts, kept or skipped: a tar.gz's whole tar (headers and non-image
files too), a zip's image entries (it never inflates the others). Time and bytes are checked
on every read, so one huge entry cannot outrun them. Every image is decoded, on the shared CPU
pool; unreadable ones are left out, as are images outside the CLASS/IMAGE layout, the first
MAX_UNREADABLE_LISTED of them listed with why. At least two classes must keep at least one
image, and at most `max_classes` class folders are taken (counted before any image is decoded).

A data set's folder holds its description (dataset.json) and, alone in a small file, its owner:
a listing or a quota check reads the owners first, and parses only the descriptions it shows.
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
import shutil
import struct
import tarfile
import time
import uuid
import zipfile
import zlib
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Callable, Iterator

from core import cancellation
from core.errors import GazerError, InvalidRequest, NotFound, PayloadTooLarge, TooManyFiles, storage_failure
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
# What zipfile inflates a piece at a time; anything else is refused up front. zipfile hands
# bzip2 and LZMA data to their decompressors with no output bound (a 324-byte bzip2 entry made
# 256 MiB at the first read), and lacks WinZip AES (99).
ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
# General-purpose flags refused: zipfile needs a password for the first, has no reader for the others.
ZIP_ENCRYPTED, ZIP_PATCHED, ZIP_STRONGLY_ENCRYPTED = 0x1, 0x20, 0x40
READ_BYTES = 1024**2  # one read from an archive; the ingest's time and bytes are checked between reads
# What a damaged archive raises while it is read: bad CRC, cut streams, bad headers.
CORRUPT = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)
# An entry's path, in UTF-8: each is kept while the archive is read, and in the error that names
# it (8,000 names of 60 KB made a 480 MB description and answer)
MAX_PATH_BYTES = 1024
MAX_UNREADABLE_LISTED = 20  # in a description; `unreadable_count` counts them all


def _corrupt(error: Exception) -> InvalidRequest:
    return InvalidRequest(f"the archive is corrupt: {error}", field="file")


class _Budget:
    """What one ingest may spend: `seconds` while its client waits (core.cancellation), and
    `max_bytes` decompressed."""

    def __init__(self, seconds: float, max_bytes: int) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.max_bytes = max_bytes
        self.spent = 0

    def check(self) -> None:
        """Stops the ingest when its time is up, or when its client has gone."""
        cancellation.check()
        if time.monotonic() > self.at:
            raise PayloadTooLarge(f"the archive took more than {self.seconds:g} s to ingest")

    def spend(self, size: int) -> None:
        self.spent += size
        if self.spent > self.max_bytes:
            raise PayloadTooLarge(f"the archive is over {self.max_bytes} bytes uncompressed")
        self.check()


class _Metered:
    """A decompressed stream whose every read, READ_BYTES at most, is charged to the budget."""

    def __init__(self, stream: IO[bytes], budget: _Budget) -> None:
        self.stream = stream
        self.budget = budget

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(READ_BYTES if size < 0 else min(size, READ_BYTES))
        self.budget.spend(len(data))
        return data

    def close(self) -> None:
        self.stream.close()

    def __enter__(self) -> _Metered:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _read_at_most(handle: IO[bytes], size: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < size and (part := handle.read(size - got)):
        parts.append(part)
        got += len(part)
    return b"".join(parts)


@dataclass(frozen=True)
class _Entry:
    path: PurePosixPath
    open: Callable[[], IO[bytes]]

    def read(self, cap: int) -> bytes:
        try:
            with self.open() as handle:
                data = _read_at_most(handle, cap + 1)
        except (*CORRUPT, OSError, ValueError) as error:  # in memory: an OSError is a damaged stream,
            raise _corrupt(error) from None                 # a ValueError a bad header offset's negative seek
        if len(data) > cap:
            raise PayloadTooLarge(f"archive entry {str(self.path)!r} is over {cap} bytes uncompressed")
        return data


def _safe_path(name: str) -> PurePosixPath:
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:  # tarfile keeps the bytes of a name that is not UTF-8 as surrogates
        raise InvalidRequest(f"archive entry {name!r} has a name that is not UTF-8", field="file") from None
    if size > MAX_PATH_BYTES:
        raise InvalidRequest(f"archive entry {name[:100]!r}... has a path of {size} bytes; the limit is "
                             f"{MAX_PATH_BYTES}", field="file")
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise InvalidRequest(f"archive entry {name!r} points outside the archive", field="file")
    return path


def _zip_entry_bound(blob: bytes) -> tuple[int, bool]:
    """The most entries zipfile could build an object for, read before it does, and whether that
    is the end record's count (else the headers counted in the central directory, which zipfile
    reads as far as the directory's size says, whatever the count): found with zipfile's own
    reader of the end record, so that no forged record reads differently here; (0, True) when
    there is none."""
    try:
        record = zipfile._EndRecData(io.BytesIO(blob))  # what ZipFile itself calls first
    except (OSError, zipfile.BadZipFile, struct.error):
        return 0, True
    if not record:
        return 0, True
    count, size = record[zipfile._ECD_ENTRIES_TOTAL], record[zipfile._ECD_SIZE]
    directory_end = record[zipfile._ECD_LOCATION]
    if record[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:
        directory_end -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator
    headers = blob.count(b"PK\x01\x02", max(0, directory_end - size), max(0, directory_end))
    return (count, True) if count >= headers else (headers, False)


def _too_many(held: str, limits: ArchiveLimits) -> TooManyFiles:
    return TooManyFiles(f"the archive {held} files; the limit is {limits.max_files}")


def _zip_entries(blob: bytes, limits: ArchiveLimits, budget: _Budget) -> Iterator[_Entry]:
    bound, from_count = _zip_entry_bound(blob)
    if bound > limits.max_files:  # a count may be forged: it is what the archive says, not what it holds
        raise _too_many(f"says it holds {bound}" if from_count else f"holds more than {limits.max_files}", limits)
    try:
        archive = zipfile.ZipFile(io.BytesIO(blob))
    except (zipfile.BadZipFile, ValueError) as error:
        raise InvalidRequest(f"the zip archive is corrupt: {error}", field="file") from None
    except NotImplementedError as error:  # an entry needs a later zip version than zipfile reads
        raise InvalidRequest(f"the zip archive needs a later zip version than is supported: {error}",
                             field="file") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_files:
            raise _too_many(f"holds {len(infos)}", limits)
        _refuse_overlaps(infos)
        for info in infos:
            if not info.filename:  # zipfile's is_dir() would index an empty name
                raise InvalidRequest("an archive entry has an empty name", field="file")
            path = _safe_path(info.filename)
            mode = (info.external_attr >> 16) & 0o170000
            if mode == 0o120000:
                raise InvalidRequest(f"archive entry {info.filename!r} is a symbolic link", field="file")
            if info.is_dir():
                continue
            if mode not in (0, 0o100000):
                raise InvalidRequest(f"archive entry {info.filename!r} is not a regular file", field="file")
            if info.flag_bits & (ZIP_ENCRYPTED | ZIP_STRONGLY_ENCRYPTED):
                raise InvalidRequest(f"archive entry {info.filename!r} is encrypted", field="file")
            if info.flag_bits & ZIP_PATCHED:
                raise InvalidRequest(f"archive entry {info.filename!r} holds patch data, which is not supported",
                                     field="file")
            if info.compress_type not in ZIP_METHODS:
                raise InvalidRequest(f"archive entry {info.filename!r} uses compression method "
                                     f"{info.compress_type}, which is not supported (store or deflate it)",
                                     field="file")
            yield _Entry(path, lambda info=info: _Metered(archive.open(info), budget))


def _refuse_overlaps(infos: list[zipfile.ZipInfo]) -> None:
    """Entries whose data overlap, the zip bomb's way past deflate's 1,032:1 (500 entries of a
    79 KB zip read one 50 MiB stream: 2 GiB staged before the size limit stopped it); the Python
    3.11 zipfile does not check. An entry takes at least its 30-byte local header and its data."""
    ordered = sorted(infos, key=lambda info: info.header_offset)
    for info, after in zip(ordered, ordered[1:]):
        if after.header_offset < info.header_offset + 30 + info.compress_size:
            raise InvalidRequest(f"archive entries {info.filename!r} and {after.filename!r} overlap in the zip "
                                 f"(one's data would be read as the other's)", field="file")


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses a header that tarfile would read whole into memory (pax, GNU long name or link)
    when it declares more than a header needs, and GNU sparse files of every format, whose maps
    run on as long as the archive says (overrides of tarfile's own steps, Python 3.11's)."""

    MAX_HEADER_BYTES = 64 * 1024
    # tarfile reads the headers before an entry by recursion, one level each: 600 of them were a
    # RecursionError; a real entry has at most a global and a pax header, a long name and a long link
    MAX_CHAINED_HEADERS = 16
    HEADERS = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
               tarfile.GNUTYPE_LONGLINK)

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type == tarfile.GNUTYPE_SPARSE:
            self._refuse_sparse()
        if self.type not in self.HEADERS:
            return super()._proc_member(tar)
        if self.size > self.MAX_HEADER_BYTES:
            raise InvalidRequest(f"the archive has a header of {self.size} bytes (entry {self.name!r}); the limit "
                                 f"is {self.MAX_HEADER_BYTES}", field="file")
        chained = getattr(tar, "gazer_chained_headers", 0)
        if chained >= self.MAX_CHAINED_HEADERS:
            raise InvalidRequest(f"the archive has over {self.MAX_CHAINED_HEADERS} extended headers before one entry",
                                 field="file")
        tar.gazer_chained_headers = chained + 1
        try:
            return super()._proc_member(tar)
        finally:
            tar.gazer_chained_headers = chained

    def _refuse_sparse(self, member: tarfile.TarInfo | None = None, *_: object) -> None:
        name = (member or self).name  # a pax header's sparse map describes the member after it
        raise InvalidRequest(f"archive entry {name!r} is a sparse file, which is not supported", field="file")

    _proc_gnusparse_00 = _proc_gnusparse_01 = _proc_gnusparse_10 = _refuse_sparse  # pax's sparse formats


def _tar_entries(blob: bytes, limits: ArchiveLimits, budget: _Budget) -> Iterator[_Entry]:
    """One pass over the stream (no seeking back): each entry must be read when it is yielded.
    gzip, not tarfile, inflates: tarfile's own "r|gz" copies its whole inflated buffer again
    on every 10 KiB read, so skipping a highly compressed entry took time quadratic in it."""
    try:
        tar = _Metered(gzip.GzipFile(fileobj=io.BytesIO(blob), mode="rb"), budget)
        archive = tarfile.open(fileobj=tar, mode="r|", tarinfo=_BoundedTarInfo)
    except CORRUPT as error:
        raise _corrupt(error) from None
    with archive:
        for count in itertools.count(1):
            try:
                member = archive.next()
            except CORRUPT as error:
                raise _corrupt(error) from None
            if member is None:
                return
            if count > limits.max_files:
                raise _too_many(f"holds more than {limits.max_files}", limits)
            archive.members.clear()  # tarfile keeps every member it has seen
            path = _safe_path(member.name)
            if member.issym() or member.islnk():
                raise InvalidRequest(f"archive entry {member.name!r} is a link", field="file")
            if member.isdir():
                continue
            if not member.isfile():
                raise InvalidRequest(f"archive entry {member.name!r} is not a regular file", field="file")
            # skipped, a size declared with no data behind it took an empty read per 10 KiB declared
            if member.size > budget.max_bytes - budget.spent:
                raise PayloadTooLarge(f"archive entry {member.name!r} declares {member.size} bytes, more than the "
                                      f"archive may hold uncompressed ({budget.max_bytes} bytes)")
            yield _Entry(path, lambda member=member: archive.extractfile(member))


def _entries(blob: bytes, limits: ArchiveLimits, budget: _Budget) -> Iterator[_Entry]:
    if blob[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return _zip_entries(blob, limits, budget)
    if blob[:2] == b"\x1f\x8b":
        return _tar_entries(blob, limits, budget)
    raise InvalidRequest("the data set must be a .zip or .tar.gz archive", field="file")


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


def _stage(entries: Iterator[_Entry], raw: Path, limits: ArchiveLimits, budget: _Budget,
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
                  budget: _Budget, charge: Callable[[int], None]) -> _Extracted:
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
    budget = _Budget(limits.max_seconds, limits.max_total_bytes)
    entries = _entries(blob, limits, budget)
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
