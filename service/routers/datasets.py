"""Data sets: upload an archive (one folder per class), list, describe, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile, status
from starlette.concurrency import run_in_threadpool

from core import datasets
from core.storage import check_name
from schemas.datasets import Dataset, DatasetList
from service.dependencies import SettingsDep, StorageDep

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.post("", response_model=Dataset, status_code=status.HTTP_201_CREATED)
async def upload_dataset(
    storage: StorageDep, settings: SettingsDep,
    file: Annotated[UploadFile, File(description=".zip or .tar.gz with one folder of images per class")],
    name: Annotated[str | None, Form(description="a name to show; default the id")] = None,
) -> Dataset:
    if name is not None:
        check_name(name, "name")
    blob = await file.read()
    return Dataset(**await run_in_threadpool(datasets.ingest_archive, blob, storage.datasets, name,
                                             settings.archive_limits))


# Plain `def` from here on: these read and delete files, so FastAPI runs them in its thread pool.
@router.get("", response_model=DatasetList)
def list_datasets(storage: StorageDep) -> DatasetList:
    found = datasets.list_datasets(storage.datasets)
    return DatasetList(data=[Dataset(**item) for item in found], count=len(found))


@router.get("/{dataset_id}", response_model=Dataset)
def describe_dataset(dataset_id: str, storage: StorageDep) -> Dataset:
    return Dataset(**datasets.describe_dataset(storage.datasets, dataset_id))


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_dataset(dataset_id: str, storage: StorageDep) -> None:
    datasets.delete_dataset(storage.datasets, dataset_id)
