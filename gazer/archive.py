"""A data set folder (one subfolder of images per class) zipped for upload, in a temporary
file, so memory stays bounded whatever the folder's size."""

from __future__ import annotations

import os
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

# Photos are compressed already: storing them is as small and much faster than deflating.
COMPRESSION = zipfile.ZIP_STORED


def folder_files(folder: Path) -> list[Path]:
    """The folder's files, in a stable order, skipping hidden ones (.DS_Store, .git)."""
    return sorted(path for path in folder.rglob("*")
                  if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts))


def zip_folder(folder: Path, sink: IO[bytes]) -> int:
    """Writes `folder`'s files, named relative to it (`cat/1.png`), as a zip into `sink`;
    returns how many."""
    files = folder_files(folder)
    with zipfile.ZipFile(sink, "w", compression=COMPRESSION) as archive:
        for path in files:
            archive.write(path, path.relative_to(folder).as_posix())
    return len(files)


@contextmanager
def dataset_archive(source: str | os.PathLike[str]) -> Iterator[tuple[str, IO[bytes]]]:
    """(file name, open binary file) to upload: a folder zipped, or the archive itself."""
    path = Path(source)
    if path.is_dir():
        if not folder_files(path):
            raise ValueError(f"{path} has no files: a data set folder holds one folder of images per class")
        with tempfile.TemporaryFile(prefix="gazer-dataset-", suffix=".zip") as spool:
            zip_folder(path, spool)
            spool.seek(0)
            yield f"{path.resolve().name or 'dataset'}.zip", spool
    else:
        with path.open("rb") as handle:
            yield path.name, handle
