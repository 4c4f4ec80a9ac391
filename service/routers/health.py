"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.dependencies import RegistryDep, SettingsDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(registry: RegistryDep, settings: SettingsDep) -> JSONResponse:
    """Ready when the default model is loaded and its ONNX and torch logits agree. Plain `def`:
    it reads the models folder, so FastAPI runs it in its thread pool."""
    models = registry.status()
    ready = models.get(settings.default_model, {}).get("state") == "ready"
    return JSONResponse({"status": "ready" if ready else "not_ready", "default_model": settings.default_model,
                         "models": models}, status_code=200 if ready else 503)
