"""`GET /metrics`: Prometheus text format. Where the service has keys, for keys with the `metrics`
scope (Prometheus's own): it names every client's models and counts their jobs."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.auth import requires

router = APIRouter(tags=["monitoring"])


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(requires("metrics"))])
def metrics(request: Request) -> Response:
    """Plain `def`: a scrape reads Redis and the models folder, so it runs in the thread pool."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
