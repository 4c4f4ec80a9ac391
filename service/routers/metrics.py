"""`GET /metrics`: Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

router = APIRouter(tags=["monitoring"])


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Plain `def`: a scrape reads Redis and the models folder, so it runs in the thread pool."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
