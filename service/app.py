"""The FastAPI application factory."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from core.errors import GazerError
from core.models.registry import ModelRegistry
from core.storage import Storage
from service.errors import install_error_handlers
from service.limits import RequestSizeLimit
from service.routers import health, models
from service.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = ModelRegistry(Storage(settings.data_dir))
        app.state.registry = registry
        try:
            await run_in_threadpool(registry.get, settings.default_model)
        except GazerError as error:
            log.error("default model %s not loaded: %s", settings.default_model, error.detail)
        yield

    app = FastAPI(title="Gazer", version="0.1.0", lifespan=lifespan,
                  description="Predictions and explanations (CAM, Grad-CAM, saliency, ...) for image classifiers.")
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(RequestSizeLimit, max_bytes=settings.max_request_bytes)
    app.include_router(health.router)
    app.include_router(models.router)
    return app
