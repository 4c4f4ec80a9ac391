"""Data sets: upload an archive (one folder per class), list, describe, delete."""

from __future__ import annotations

import shutil
import threading
from contextlib import contextmanager
from typing import Annotated, Iterator

from fastapi import APIRouter, BackgroundTasks, Depends, File, Form, Request, Response, UploadFile, status
from starlette.concurrency import run_in_threadpool

from core import cancellation, datasets
from core.storage import check_name
from schemas.datasets import Dataset, DatasetList
from service.auth import Caller, CallerDep
from service.dependencies import QueueDep, SettingsDep, StorageDep, charge_decoding, dataset_slot
from service.disconnects import client_watch
from service.form_fields import refuse_unknown_fields
from service.quotas import check_dataset_quota, check_unread

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.post("", response_model=Dataset, status_code=status.HTTP_201_CREATED,
             dependencies=[Depends(refuse_unknown_fields)])
async def upload_dataset(
    request: Request, response: Response,
    storage: StorageDep, settings: SettingsDep, caller: CallerDep, queue: QueueDep,
    file: Annotated[UploadFile, File(description=".zip or .tar.gz with one folder of images per class")],
    name: Annotated[str | None, Form(description="a name to show; default the id")] = None,
) -> Dataset:
    if name is not None:
        check_name(name, "name")
    check_dataset_quota(caller, storage, settings)  # before the work; again as the data set appears
    async with dataset_slot(request, caller):
        blob = await file.read()

        @contextmanager
        def within_quota() -> Iterator[None]:
            with queue.claim_lock(caller.owner):
                check_dataset_quota(caller, storage, settings)
                yield

        def ingest(gone: threading.Event) -> dict:
            with cancellation.for_client(gone):
                return datasets.ingest_archive(blob, storage.datasets, name, settings.archive_limits, caller.owner,
                                               within_quota, storage.check_room, charge_decoding(request, caller))

        async with client_watch(request) as gone:
            dataset = Dataset(**await run_in_threadpool(ingest, gone))
    response.headers["Location"] = f"/v1/datasets/{dataset.id}"
    return dataset


# Plain `def` from here on: these read and delete files, so FastAPI runs them in its thread pool.
@router.get("", response_model=DatasetList)
def list_datasets(storage: StorageDep, caller: CallerDep) -> DatasetList:
    found = datasets.list_datasets(storage.datasets, caller.sees)
    return DatasetList(data=[Dataset(**item) for item in found], count=len(found))


@router.get("/{dataset_id}", response_model=Dataset)
def describe_dataset(dataset_id: str, storage: StorageDep, caller: CallerDep) -> Dataset:
    return Dataset(**_visible(dataset_id, storage, caller))


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def delete_dataset(dataset_id: str, storage: StorageDep, caller: CallerDep, queue: QueueDep,
                   after_answer: BackgroundTasks) -> None:
    """409 while a queued or running job reads it (it would fail part way). It is gone for every
    request at once; its files are removed after the answer is sent (a reviewer's 20,000 took
    33 s on a busy machine)."""
    _visible(dataset_id, storage, caller)

    @contextmanager
    def unread() -> Iterator[None]:
        with queue.dataset_lock(dataset_id):
            check_unread(f"data set {dataset_id!r}", queue.jobs_using_dataset(dataset_id), caller, "dataset_id")
            yield

    datasets.delete_dataset(storage.datasets, dataset_id, unread,
                            remove=lambda aside: after_answer.add_task(shutil.rmtree, aside, ignore_errors=True))


def _visible(dataset_id: str, storage: StorageDep, caller: Caller) -> dict:
    """The data set's description; 404 for one of another key, unless the caller holds `admin`."""
    description = datasets.describe_dataset(storage.datasets, dataset_id)
    caller.check_owns(description.get("owner"), f"data set {dataset_id!r}")
    return description
