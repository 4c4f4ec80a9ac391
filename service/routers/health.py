"""Liveness and readiness."""

from __future__ import annotations

import logging

import redis
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from core.errors import GazerError
from core.models.refs import parse_ref
from service.auth import Unauthorized, authenticate
from service.dependencies import QueueDep, RegistryDep, SettingsDep

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={200: {"description": "ready"},
                                   503: {"description": "not ready (the default model or Redis): the same fields",
                                         "content": {"application/json": {}}}})
def readyz(request: Request, registry: RegistryDep, settings: SettingsDep, queue: QueueDep) -> JSONResponse:
    """Ready when the default model is loaded (its ONNX and torch logits agree) and Redis
    answers. Live workers are counted, not required: predictions need none. Where keys are
    required, a caller without a `predict` key sees the default model alone, not the names of
    uploaded ones. Plain `def`: it reads the models folder and Redis, so FastAPI runs it in its
    thread pool."""
    models = registry.status()
    try:
        model_ready = registry.state(settings.default_model)["state"] == "ready"  # NAME@V too
    except GazerError:  # deleted since the start
        model_ready = False
    if not _may_list_models(request):
        name = parse_ref(settings.default_model)[0]
        models = {model: state for model, state in models.items() if model == name}
    try:
        workers: int | None = len(queue.store.live_workers(queue.store.quick))  # a probe's time
        redis_state = "ready"
    except redis.RedisError as error:
        log.warning("readiness: Redis is unreachable: %s", error)
        workers, redis_state = None, f"unreachable: {type(error).__name__} (the server log has the cause)"
    ready = model_ready and redis_state == "ready"
    return JSONResponse({"status": "ready" if ready else "not_ready", "default_model": settings.default_model,
                         "models": models, "redis": redis_state, "workers": workers},
                        status_code=200 if ready else 503)


def _may_list_models(request: Request) -> bool:
    try:
        return authenticate(request.app.state.keys, request.headers).grants("predict")
    except Unauthorized:
        return False
