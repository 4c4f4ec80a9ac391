"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import gc
import logging
from contextlib import ExitStack, asynccontextmanager
from typing import AsyncIterator

import anyio
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from infra.embedded_redis import EmbeddedRedis
from core.batching import Batching
from core.parallel import single_threaded_blas
from core.runtime.denormals import flush_denormals
from core.models.registry import ModelRegistry
from core.storage import Storage
from service import default_model
from service.admission import (ClientShares, ExplanationSlots, ModelQueues, PixelBudget, RefuseOverCapacity,
                               RefuseBeforeBodies)
from service.auth import KeyStore, KeysBeforeBodies, requires
from service.dependencies import DATASET_INGESTS
from service.errors import PROBLEM_RESPONSES, install_error_handlers
from service.limits import JSON_BODY_BYTES, RefuseUnfinishedMultipart, RequestSizeLimit, RoomBeforeUploads
from service.metrics import Metrics
from service.openapi import correcting
from service.negotiation import acceptable
from service.guards import BrowserHeaders, RefuseForeignOrigins, RefuseUnknownHosts
from service.head_requests import HeadAsGet
from service.queue import JobQueue, resend_lost_messages_forever
from service.rate_limits import LimitRequestsBeforeBodies, RateLimiter, StreamSlots
from service.retention import sweep_forever
from service.request_context import RequestContext
from service.routers import datasets, docs, health, jobs, metrics, model_versions, models, web
from service.routers.jobs import JOB_TYPES
from service.settings import Settings
from service.stopping import AnswerRequestsCutByTheStop

log = logging.getLogger(__name__)


def out_of_the_collectors_way() -> None:
    """Moves what imports and the default model made (about 490,000 objects) out of reach of the
    garbage collector's full collections, which scanned them all with the GIL held (280 ms in
    process, 0.01 ms once frozen): under 8-client load, one in each of two probed runs (15 and 40 s)
    stopped every request for 312 and 470 ms. Undone at shutdown (gc.unfreeze), so that a cycle
    among them can still be collected once the app is gone."""
    gc.collect()
    gc.freeze()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    storage = Storage(settings.data_dir, settings.min_free_disk_bytes)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        single_threaded_blas()
        flush_denormals()  # on the thread that starts the app's others
        registry = ModelRegistry(storage, settings.max_loaded_models, resident=(settings.default_model,),
                                 batching=Batching(settings.max_batch, settings.batch_wait_ms / 1000,
                                                   lambda runtime, images: app.state.metrics.run_size.labels(
                                                       runtime).observe(images)),
                                 onnx_fp16=settings.onnx_fp16, bfloat16=settings.cuda_bfloat16)
        app.state.registry = registry
        # explanations wait on their model's batcher in threads of their own, not in the 40 that
        # every other blocking call of the app shares
        app.state.explanation_threads = anyio.CapacityLimiter(settings.max_concurrent_explanations)
        app.state.upload_slots = anyio.Semaphore(1)
        app.state.dataset_slots = anyio.Semaphore(DATASET_INGESTS)
        with ExitStack() as on_shutdown:  # also unwinds what started if a later step fails
            redis_url = settings.redis_url
            if redis_url is None:
                embedded = on_shutdown.enter_context(EmbeddedRedis(storage.redis))
                redis_url = embedded.url
                log.info("no GAZER_REDIS_URL: started an embedded redis-server at %s", redis_url)
            app.state.queue = JobQueue(redis_url, settings.job_lease_seconds, settings.visibility_timeout)
            on_shutdown.callback(app.state.queue.close)
            sweeping = asyncio.create_task(sweep_forever(app.state.queue.store, storage,
                                                         settings.job_retention_days * 86400))
            on_shutdown.callback(sweeping.cancel)
            on_shutdown.callback(asyncio.create_task(app.state.metrics.refresh_models_forever()).cancel)
            on_shutdown.callback(asyncio.create_task(resend_lost_messages_forever(app.state.queue)).cancel)
            said = await default_model.load(registry, settings.default_model)
            on_shutdown.callback(asyncio.create_task(
                default_model.keep_loaded_forever(registry, settings.default_model, said)).cancel)
            out_of_the_collectors_way()
            on_shutdown.callback(gc.unfreeze)
            yield

    app = FastAPI(title="Gazer", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,  # routers.docs
                  description="Predictions and explanations (CAM, Grad-CAM, saliency, ...) for image classifiers.")
    app.state.settings = settings
    app.state.metrics = Metrics(app.state, settings.max_concurrent_explanations, storage)
    app.state.keys = KeyStore(settings.api_keys) if settings.api_keys else None
    app.state.request_limiter = RateLimiter("requests", settings.requests_per_second, settings.request_burst)
    app.state.compute_limiter = RateLimiter("forward passes", settings.compute_per_second, settings.compute_burst)
    app.state.event_streams = StreamSlots(settings.max_event_streams, settings.max_event_streams_per_client)
    app.state.model_queues = ModelQueues(settings.max_queued_per_model, settings.max_queued_per_client)
    app.state.explanation_slots = ExplanationSlots(settings.max_concurrent_explanations,
                                                   settings.max_explanations_per_client)
    app.state.dataset_ingests = ClientShares(settings.max_dataset_ingests_per_client, "data set uploads in progress",
                                             "GAZER_MAX_DATASET_INGESTS_PER_CLIENT")
    app.state.explained_pixels = PixelBudget(settings.max_explained_pixels, settings.explained_pixels_per_client)
    install_error_handlers(app)
    # Outermost last: the headers for browsers, ids and metrics, then Host, Origin and CORS, then
    # keys and scopes (their 401s and 403s carry CORS headers, and come before anything reads a
    # body), then a full queue's early 503 and a full share's 429 or quota's 403 (told only to callers
    # with a key), then the request rate,
    # then the size limit, then an upload's room on disk, then a multipart body's closing delimiter,
    # then HEAD as GET (metrics, logs and limits see HEAD). Within the ids and metrics, a request the
    # stop cuts is answered 503.
    app.add_middleware(HeadAsGet, router=app.router)
    app.add_middleware(RefuseUnfinishedMultipart)
    app.add_middleware(RoomBeforeUploads, storage=storage)
    app.add_middleware(RequestSizeLimit, max_bytes=settings.max_request_bytes,
                       per_path={"/v1/datasets": settings.max_dataset_bytes, "/v1/models": settings.max_model_bytes,
                                 **{f"/v1/jobs/{kind}": JSON_BODY_BYTES for kind in JOB_TYPES}},
                       idle_seconds=settings.body_idle_seconds,
                       min_bytes_per_second=settings.body_min_bytes_per_second)
    app.add_middleware(LimitRequestsBeforeBodies, limiter=app.state.request_limiter, keys=app.state.keys)
    app.add_middleware(RefuseBeforeBodies, keys=app.state.keys, queues=app.state.model_queues,
                       explanations=app.state.explanation_slots, ingests=app.state.dataset_ingests, storage=storage,
                       settings=settings)
    app.add_middleware(KeysBeforeBodies, keys=app.state.keys)
    if settings.cors_origin_list:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origin_list, allow_methods=["*"],
                           allow_headers=["Authorization", "X-API-Key", "X-Request-ID", "Content-Type", "Accept"],
                           expose_headers=["X-Request-ID", "Location", "Retry-After"])
    app.add_middleware(RefuseForeignOrigins, allowed=settings.cors_origin_list)
    app.add_middleware(RefuseUnknownHosts, allowed=settings.allowed_host_list)
    app.add_middleware(RefuseOverCapacity)
    app.add_middleware(AnswerRequestsCutByTheStop)
    app.add_middleware(RequestContext, metrics=app.state.metrics)  # outside the size limit: its 413s count too
    app.add_middleware(BrowserHeaders)  # on every answer, errors of the middleware within included
    app.include_router(health.router)
    app.include_router(model_versions.router, dependencies=[Depends(acceptable)], responses=PROBLEM_RESPONSES)
    app.include_router(models.router, dependencies=[Depends(requires("predict")), Depends(acceptable)],
                       responses=PROBLEM_RESPONSES)
    app.include_router(datasets.router, dependencies=[Depends(requires("jobs")), Depends(acceptable)],
                       responses=PROBLEM_RESPONSES)
    app.include_router(jobs.router, dependencies=[Depends(requires("jobs")), Depends(acceptable)],
                       responses=PROBLEM_RESPONSES)
    app.include_router(metrics.router)
    app.include_router(web.router)
    app.mount("/static", web.static_files(), name="static")
    app.include_router(docs.router)
    app.openapi = correcting(app.openapi, keys_required=app.state.keys is not None)  # type: ignore[method-assign]
    app.mount(docs.ASSETS_PATH, docs.assets(), name="docs-assets")
    return app
