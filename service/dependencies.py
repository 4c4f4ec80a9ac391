"""Typed dependencies for the routers."""

from __future__ import annotations

import fcntl
import math
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from typing import Annotated, AsyncIterator, Callable, Iterator

import anyio
from fastapi import Depends, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from core.errors import InvalidRequest, PayloadTooLarge, ServiceBusy, TooManyFiles
from core.imaging import refuse_any
from core.models.registry import LoadedModel, ModelRegistry
from core.storage import Storage
from service.auth import Caller, CallerDep
from service.metrics import Metrics
from service.queue import JobQueue
from service.rate_limits import TooManyRequests, client_id
from service.settings import Settings


# Dependencies are `async def` even when they do not await: FastAPI runs a plain `def`
# dependency in its thread pool, a thread hop per request for a dictionary lookup.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


async def get_storage(request: Request) -> Storage:
    return request.app.state.registry.storage


async def get_queue(request: Request) -> JobQueue:
    return request.app.state.queue


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
StorageDep = Annotated[Storage, Depends(get_storage)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


# What a model load is charged to its client, in forward passes of its compute bucket: about a
# second of CPU (Lite1 or Lite2 here), a hundred Lite0 forwards. Asking in turn for more models
# than GAZER_MAX_LOADED_MODELS made every request a load, uncharged.
MODEL_LOAD_COST = 100


def load_model(registry: ModelRegistry, ref: str, request: Request, caller: Caller) -> LoadedModel:
    """`ref`, loaded where it is not, at MODEL_LOAD_COST of its caller's compute (else 429). Only
    the request that loads it pays: not one that waited while another loaded it, nor one for an
    unknown model (404) or one whose load failed (503 until it is tried again)."""
    limiter = request.app.state.compute_limiter
    return registry.get(ref, before_load=lambda: limiter.take(client_id(caller, request),
                                                               min(MODEL_LOAD_COST, limiter.burst)))


# What decoding a data set's images is charged, in forward passes of its client's compute bucket:
# one per this many pixels their headers declare. A lossless WebP decodes at about 11 ms a
# megapixel here (441 ms for 6300x6300), a Lite0 forward's CPU; 300 of them in a 4.3 KB tar.gz
# held an ingest slot for 90 s, uncharged.
DECODED_PIXELS_PER_FORWARD = 1_000_000


def charge_decoding(request: Request, caller: Caller) -> Callable[[int], None]:
    """What a data set upload calls with the pixels its images declare, before any is decoded:
    takes them from its client's compute bucket, else 429; more than the bucket holds is a 422
    with the cost and the budget, since no wait would let it pass (datasets.ingest_archive's `charge`)."""
    limiter = request.app.state.compute_limiter
    client = client_id(caller, request)

    def charge(pixels: int) -> None:
        cost = math.ceil(pixels / DECODED_PIXELS_PER_FORWARD)
        if cost > limiter.burst:
            raise InvalidRequest(f"decoding the archive's images ({pixels} pixels as their headers declare) costs "
                                 f"{cost} forward passes of compute, and a client's bucket holds {limiter.burst:g} "
                                 f"(GAZER_COMPUTE_BURST): upload fewer images, or smaller ones", field="file",
                                 cost=cost, budget=int(limiter.burst))
        try:
            limiter.take(client, cost)
        except TooManyRequests as refused:
            refused.detail = (f"decoding the archive's images ({pixels} pixels as their headers declare) costs {cost} "
                              f"forward passes of compute: {refused.detail}")
            raise

    return charge


async def get_model(model: str, registry: RegistryDep, request: Request, caller: CallerDep) -> LoadedModel:
    """The model named in the path, loaded (off the event loop) on first use."""
    return registry.loaded(model) or await run_in_threadpool(load_model, registry, model, request, caller)


ModelDep = Annotated[LoadedModel, Depends(get_model)]


async def read_uploads(files: list[UploadFile], settings: Settings) -> list[bytes]:
    if len(files) > settings.max_files:
        raise TooManyFiles(f"{len(files)} files in one request; the limit is {settings.max_files}")
    refuse_any([PayloadTooLarge(f"file {index}{f' ({upload.filename[:100]!r})' if upload.filename else ''} is "
                                f"{upload.size} bytes; the limit is {settings.max_file_bytes}", field=f"file.{index}")
                for index, upload in enumerate(files)
                if upload.size is not None and upload.size > settings.max_file_bytes])
    return [await upload.read() for upload in files]


@asynccontextmanager
async def taken(slots: anyio.Semaphore, wait_seconds: float, busy: str) -> AsyncIterator[None]:
    """One of `slots`, waited for in the event loop (not in a thread), or ServiceBusy saying
    `busy` once `wait_seconds` have passed."""
    with anyio.move_on_after(wait_seconds) as wait:
        await slots.acquire()
    if wait.cancelled_caught:
        raise ServiceBusy(busy)
    try:
        yield
    finally:
        slots.release()


@contextmanager
def explanation_slot(request: Request, caller: Caller) -> Iterator[None]:
    """One of the app's explanation slots (`max_concurrent_explanations`), or 503 at once; 429
    once this client holds its share (`max_explanations_per_client`)."""
    with request.app.state.explanation_slots.taken(client_id(caller, request)), \
            request.app.state.metrics.explain_slots_in_use.track_inprogress():
        yield


def admitted(request: Request, model: LoadedModel, caller: Caller) -> AbstractContextManager[None]:
    """A place in the model version's bounded queue, or 503 with Retry-After at once; 429 once
    this client holds its share of it."""
    return request.app.state.model_queues.admitted(request.path_params["model"], model.spec.ref,
                                                   client_id(caller, request))


@asynccontextmanager
async def upload_slot(request: Request) -> AsyncIterator[None]:
    """Model uploads build, run and export a network (an ONNX file's check takes up to
    GAZER_ONNX_CHECK_MEMORY_BYTES): one at a time over all API processes sharing the data
    folder. This process's slot first, then the lock file they share; ServiceBusy once the wait
    is over."""
    settings: Settings = request.app.state.settings
    busy = f"another model upload kept the server busy for {settings.explain_queue_seconds:g} s; retry later"
    deadline = anyio.current_time() + settings.explain_queue_seconds
    async with taken(request.app.state.upload_slots, settings.explain_queue_seconds, busy):
        path = request.app.state.registry.storage.upload_lock
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as lock_file:
            while True:
                try:
                    fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if anyio.current_time() >= deadline:
                        raise ServiceBusy(busy) from None
                    await anyio.sleep(UPLOAD_LOCK_POLL_SECONDS)
            yield  # closing the file releases the lock


UPLOAD_LOCK_POLL_SECONDS = 0.05
# Data set uploads extracted at once by one API process: each holds its archive (up to
# GAZER_MAX_DATASET_BYTES) in memory meanwhile.
DATASET_INGESTS = 2


@asynccontextmanager
async def dataset_slot(request: Request, caller: Caller) -> AsyncIterator[None]:
    """One of the process's DATASET_INGESTS, waited for up to GAZER_EXPLAIN_QUEUE_SECONDS; 429 at
    once while this client has GAZER_MAX_DATASET_INGESTS_PER_CLIENT uploads extracted or waiting."""
    wait = request.app.state.settings.explain_queue_seconds
    with request.app.state.dataset_ingests.held(client_id(caller, request)):
        async with taken(request.app.state.dataset_slots, wait,
                         f"{DATASET_INGESTS} other data set uploads kept the server busy for {wait:g} s; retry later"):
            yield
