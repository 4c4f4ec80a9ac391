"""The FastAPI application factory."""

from __future__ import annotations

import logging
from contextlib import ExitStack, asynccontextmanager
from typing import AsyncIterator

import anyio
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from infra.embedded_redis import EmbeddedRedis
from core.errors import GazerError
from core.models.registry import ModelRegistry
from core.storage import Storage
from service.errors import install_error_handlers
from service.limits import RequestSizeLimit
from service.metrics import Metrics
from service.queue import JobQueue
from service.request_context import RequestContext
from service.routers import datasets, health, jobs, metrics, model_versions, models, web
from service.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        storage = Storage(settings.data_dir)
        registry = ModelRegistry(storage, settings.max_loaded_models, resident=(settings.default_model,))
        app.state.registry = registry
        app.state.explanation_slots = anyio.Semaphore(settings.max_concurrent_explanations)
        app.state.upload_slots = anyio.Semaphore(1)
        with ExitStack() as on_shutdown:  # also unwinds what started if a later step fails
            redis_url = settings.redis_url
            if redis_url is None:
                embedded = on_shutdown.enter_context(EmbeddedRedis(storage.redis))
                redis_url = embedded.url
                log.info("no GAZER_REDIS_URL: started an embedded redis-server at %s", redis_url)
            app.state.queue = JobQueue(redis_url, settings.job_lease_seconds, settings.visibility_timeout)
            on_shutdown.callback(app.state.queue.close)
            try:
                await run_in_threadpool(registry.get, settings.default_model)
            except GazerError as error:
                log.error("default model %s not loaded: %s", settings.default_model, error.detail)
            yield

    app = FastAPI(title="Gazer", version="0.1.0", lifespan=lifespan,
                  description="Predictions and explanations (CAM, Grad-CAM, saliency, ...) for image classifiers.")
    app.state.settings = settings
    app.state.metrics = Metrics(app.state, settings.max_concurrent_explanations)
    install_error_handlers(app)
    app.add_middleware(RequestSizeLimit, max_bytes=settings.max_request_bytes,
                       per_path={"/v1/datasets": settings.max_dataset_bytes, "/v1/models": settings.max_model_bytes})
    app.add_middleware(RequestContext, metrics=app.state.metrics)  # outside the size limit: its 413s count too
    app.include_router(health.router)
    app.include_router(model_versions.router)
    app.include_router(models.router)
    app.include_router(datasets.router)
    app.include_router(jobs.router)
    app.include_router(metrics.router)
    app.include_router(web.router)
    app.mount("/static", web.static_files(), name="static")
    return app
