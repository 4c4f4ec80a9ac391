"""Entries of an uploaded .zip or .tar.gz, read with bounded cost: every byte decompressed is
charged to a Budget of bytes and seconds on every read (READ_BYTES at most), so that one huge
entry cannot outrun it, and more than `max_files` entries are refused as the archive streams by.
Refused: absolute paths, `..`, links, devices and anything that is not a plain file or folder;
encrypted entries and compression methods other than stored and deflated; zip entries whose data
overlap; damaged archives; a path over MAX_PATH_BYTES."""

from __future__ import annotations

import gzip
import io
import itertools
import struct
import tarfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, Callable, Iterator

from core import cancellation
from core.errors import InvalidRequest, PayloadTooLarge, TooManyFiles

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


def _corrupt(error: Exception) -> InvalidRequest:
    return InvalidRequest(f"the archive is corrupt: {error}", field="file")


class Budget:
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

    def __init__(self, stream: IO[bytes], budget: Budget) -> None:
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
class Entry:
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


def _too_many(held: str, max_files: int) -> TooManyFiles:
    return TooManyFiles(f"the archive {held} files; the limit is {max_files}")


def _zip_entries(blob: bytes, max_files: int, budget: Budget) -> Iterator[Entry]:
    bound, from_count = _zip_entry_bound(blob)
    if bound > max_files:  # a count may be forged: it is what the archive says, not what it holds
        raise _too_many(f"says it holds {bound}" if from_count else f"holds more than {max_files}", max_files)
    try:
        archive = zipfile.ZipFile(io.BytesIO(blob))
    except (zipfile.BadZipFile, ValueError) as error:
        raise InvalidRequest(f"the zip archive is corrupt: {error}", field="file") from None
    except NotImplementedError as error:  # an entry needs a later zip version than zipfile reads
        raise InvalidRequest(f"the zip archive needs a later zip version than is supported: {error}",
                             field="file") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > max_files:
            raise _too_many(f"holds {len(infos)}", max_files)
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
            yield Entry(path, lambda info=info: _Metered(archive.open(info), budget))


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


def _tar_entries(blob: bytes, max_files: int, budget: Budget) -> Iterator[Entry]:
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
            if count > max_files:
                raise _too_many(f"holds more than {max_files}", max_files)
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
            yield Entry(path, lambda member=member: archive.extractfile(member))


def archive_entries(blob: bytes, max_files: int, budget: Budget) -> Iterator[Entry]:
    """The archive's files, a .zip's or a .tar.gz's (by its first bytes), each to be read when it
    is yielded; folders are left out."""
    if blob[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return _zip_entries(blob, max_files, budget)
    if blob[:2] == b"\x1f\x8b":
        return _tar_entries(blob, max_files, budget)
    raise InvalidRequest("the data set must be a .zip or .tar.gz archive", field="file")
