"""Hypothesis-crafted zip and tar.gz archives fed straight to core.datasets.ingest_archive.

Whatever the archive (hostile names, links and devices, bombs, patched headers, cut or flipped
bytes), ingest either returns a description or raises a GazerError with a 4xx status; it ends
in bounded time and memory; it writes nothing outside its folder and leaves nothing behind
when it refuses.
"""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import tempfile
import time
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from core.datasets import OWNER, ArchiveLimits, ingest_archive
from core.errors import GazerError

LIMITS = ArchiveLimits(max_files=12, max_total_bytes=256 * 1024, max_image_pixels=64 * 64,
                       max_file_bytes=64 * 1024, max_seconds=4.0)
SECONDS = 5.0  # per example, deadline included
PEAK_BYTES = 48 * 1024**2  # a few times the uncompressed budget plus the blob and decoding


def _png(size: int, colour: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (colour, 255 - colour, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


PNGS = [_png(8, 10), _png(16, 200), _png(65, 90)]  # the last is over max_image_pixels

SPECIAL_NAMES = ["cat/a.png", "dog/b.png", "pets/cat/a.png", "pets/dog/b.png", "../evil.png",
                 "cat/../../evil.png", "/abs/cat/a.png", "C:/cat/a.png", "C:\\cat\\a.png",
                 "cat\\..\\..\\evil.png", "dataset.json", "dataset.json/a.png", "cat/dataset.json",
                 ".hidden/a.png", "cat/.a.png", "__MACOSX/cat/a.png", "cat/", "", ".", "./cat/a.png",
                 "ĉat/ä.png", "猫/图.png", "cat/" + "a" * 300 + ".png", "x" * 5000, "cat//a.png",
                 "cat/a.PNG", "con/a.png", "cat\x00/a.png", "a/b/c/d.png", ".."]
names = st.one_of(st.sampled_from(SPECIAL_NAMES),
                  st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=4).map("/".join),
                  st.builds(lambda cls, ext: f"{cls}/x{ext}", st.sampled_from(["cat", "dog", "c" * 200]),
                            st.sampled_from([".png", ".jpg", ".txt", ""])))
contents = st.one_of(st.sampled_from(PNGS), st.binary(max_size=300),
                     # bombs: far more uncompressed than the limits allow, tiny compressed
                     st.integers(min_value=1, max_value=3 * 1024**2).map(lambda n: b"\0" * n))
hostile = st.lists(st.tuples(names, contents), min_size=0, max_size=16)
# Mostly-good archives (class folders of small PNGs, maybe wrapped in one folder) with a few
# hostile entries mixed in, so the fuzzer also reaches decoding, placing and success.
plausible = st.builds(
    lambda good, root, bad, at: (lambda items: items[:at] + bad + items[at:])(
        [(f"{root}{label}/{index}.png", PNGS[index % len(PNGS)]) for index, label in enumerate(good)]),
    st.lists(st.sampled_from(["cat", "dog", "bird"]), min_size=1, max_size=8),
    st.sampled_from(["", "pets/", "./", ".git/"]),
    st.lists(st.tuples(names, contents), max_size=2), st.integers(0, 8))
entries = st.one_of(plausible, hostile)


def _zip(items, methods, flag_patches, attr_patches) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for (name, data), method in zip(items, methods):
            info = zipfile.ZipInfo(name.replace("\x00", "_") or "_")
            info.compress_type = method
            archive.writestr(info, data)
    blob = bytearray(buffer.getvalue())
    # Patch the central directory: general-purpose flag bits, compression method, external
    # attributes (symlink, device, fifo modes) of the entries the draws pick.
    where, index = 0, 0
    while (where := blob.find(b"PK\x01\x02", where)) >= 0 and where + 46 <= len(blob):
        flags, method = flag_patches.get(index, (None, None))
        if flags is not None:
            struct.pack_into("<H", blob, where + 8, flags)
        if method is not None:
            struct.pack_into("<H", blob, where + 10, method)
        if (mode := attr_patches.get(index)) is not None:
            struct.pack_into("<I", blob, where + 38, mode << 16)
        where, index = where + 4, index + 1
    return bytes(blob)


TAR_TYPES = [tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
             tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE, tarfile.CONTTYPE, b"x", b"g", b"Z"]


def _tar(items, types, link_names, format_) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=format_) as archive:
        for index, ((name, data), link) in enumerate(zip(items, link_names)):
            kind = types.get(index, tarfile.REGTYPE)
            info = tarfile.TarInfo(name.replace("\x00", "_") or "_")
            info.type = kind
            if kind in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
                info.size = len(data)
                try:
                    archive.addfile(info, io.BytesIO(data))
                except (ValueError, UnicodeError):  # a name the format cannot hold
                    continue
            else:
                info.linkname = link
                try:
                    archive.addfile(info)
                except (ValueError, UnicodeError):
                    continue
    return gzip.compress(raw.getvalue(), compresslevel=1, mtime=0)


zip_archives = st.builds(
    _zip, entries, st.lists(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                                             zipfile.ZIP_LZMA]), min_size=16, max_size=16),
    # a few entries (by index) get patched general-purpose flags, method or external attributes
    st.dictionaries(st.integers(0, 15), st.tuples(
        st.one_of(st.none(), st.integers(0, 0xFFFF), st.sampled_from([0x1, 0x8, 0x40, 0x800])),
        st.one_of(st.none(), st.integers(0, 0xFFFF), st.sampled_from([1, 6, 9, 97, 98, 99]))), max_size=2),
    st.dictionaries(st.integers(0, 15), st.sampled_from([0o120777, 0o020644, 0o060644, 0o010644, 0o040755,
                                                         0o140755, 0o100644]), max_size=2))
tar_archives = st.builds(
    _tar, entries, st.dictionaries(st.integers(0, 15), st.sampled_from(TAR_TYPES), max_size=3),
    st.lists(st.sampled_from(["cat/a.png", "../../etc/passwd", "/etc/passwd", "dog"]), min_size=16, max_size=16),
    st.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT]))


@st.composite
def damaged(draw, archives):
    """Valid-looking archives cut short, with bytes flipped, or with junk before or after."""
    blob = bytearray(draw(archives))
    for _ in range(draw(st.integers(0, 4))):
        if blob:
            blob[draw(st.integers(0, len(blob) - 1))] ^= draw(st.integers(1, 255))
    how = draw(st.sampled_from(["none", "truncate", "prefix", "suffix"]))
    if how == "truncate" and blob:
        blob = blob[:draw(st.integers(0, len(blob) - 1))]
    elif how == "prefix":
        blob = draw(st.sampled_from([b"PK\x03\x04", b"\x1f\x8b", b"PK\x05\x06"])) + blob
    elif how == "suffix":
        blob += draw(st.binary(max_size=64))
    return bytes(blob)


archives = st.one_of(zip_archives, tar_archives, damaged(zip_archives), damaged(tar_archives),
                     st.binary(max_size=512),
                     st.binary(max_size=512).map(lambda tail: b"PK\x03\x04" + tail),
                     st.binary(max_size=512).map(lambda tail: b"\x1f\x8b" + tail))


@pytest.mark.filterwarnings("ignore:Duplicate name")
@settings(max_examples=500, deadline=None, derandomize=True, database=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(blob=archives)
def test_any_archive_is_ingested_or_refused_cleanly(blob):
    with tempfile.TemporaryDirectory() as base:
        base = Path(base)
        datasets = base / "datasets"
        datasets.mkdir()
        (base / "sentinel").write_bytes(b"untouched")
        tracemalloc.start()
        started = time.monotonic()
        try:
            description = ingest_archive(blob, datasets, None, LIMITS)
        except GazerError as error:
            description = None
            event(f"refused {error.status}: {error.detail[:40]}")
            assert 400 <= error.status < 500, (error.status, error.detail)
        finally:
            elapsed = time.monotonic() - started
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        assert elapsed < SECONDS, f"ingest took {elapsed:.1f} s"
        assert peak < PEAK_BYTES, f"ingest peaked at {peak / 1024**2:.1f} MB"
        # Nothing outside the data set folder, nothing left behind on a refusal.
        assert sorted(path.name for path in base.iterdir()) == ["datasets", "sentinel"]
        assert (base / "sentinel").read_bytes() == b"untouched"
        assert not any((place / "evil.png").exists() for place in (base.parent, Path.cwd(), Path("/abs")))
        if description is None:
            assert list(datasets.iterdir()) == []
            return
        event("accepted")
        stored = datasets / description["id"]
        assert [path.name for path in datasets.iterdir()] == [description["id"]]
        assert not any(path.is_symlink() for path in stored.rglob("*"))
        kept = [path.relative_to(stored) for path in stored.rglob("*") if path != stored / OWNER]
        assert not any(part.startswith(".") for path in kept for part in path.parts)  # nothing staged is left
        assert sorted(path.name for path in stored.iterdir() if path.is_dir()) == description["classes"]
        assert len(description["classes"]) >= 2
        for label, count in description["counts"].items():
            assert 0 < count == len(list((stored / label).iterdir()))


def test_the_fuzzer_reaches_success():
    """A sanity check on the harness: a good archive through the same helper is accepted."""
    blob = _zip([("cat/a.png", PNGS[0]), ("dog/b.png", PNGS[1])], [zipfile.ZIP_DEFLATED] * 2, {}, {})
    with tempfile.TemporaryDirectory() as base:
        assert ingest_archive(blob, Path(base), None, LIMITS)["counts"] == {"cat": 1, "dog": 1}
