"""Liveness and readiness."""

from __future__ import annotations

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.dependencies import QueueDep, RegistryDep, SettingsDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(registry: RegistryDep, settings: SettingsDep, queue: QueueDep) -> JSONResponse:
    """Ready when the default model is loaded (its ONNX and torch logits agree) and Redis
    answers. Live workers are counted, not required: predictions need none. Plain `def`: it
    reads the models folder and Redis, so FastAPI runs it in its thread pool."""
    models = registry.status()
    model_ready = models.get(settings.default_model, {}).get("state") == "ready"
    try:
        workers: int | None = len(queue.store.live_workers())
        redis_state = "ready"
    except redis.RedisError as error:
        workers, redis_state = None, f"unreachable: {error}"
    ready = model_ready and redis_state == "ready"
    return JSONResponse({"status": "ready" if ready else "not_ready", "default_model": settings.default_model,
                         "models": models, "redis": redis_state, "workers": workers},
                        status_code=200 if ready else 503)
