"""Every request gets an id (the client's X-Request-ID when it is short and safe, else a new
one), set for the logs and sent back on the response, and is counted by route template."""

from __future__ import annotations

import re
import time
import uuid

from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infra.logs import request_id
from service.metrics import Metrics

HEADER = "x-request-id"
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def accepted_id(sent: bytes | None) -> str:
    text = sent.decode("latin-1") if sent is not None else ""
    return text if _SAFE_ID.fullmatch(text) else uuid.uuid4().hex


def route_template(scope: Scope) -> str | None:
    """The template of the route that answered, never the raw path; None when the router did not
    match (or was never reached). FastAPI's routes leave themselves in the scope; Starlette's
    (FastAPI's own /openapi.json) leave their endpoint, and a mount (the static files) its app."""
    if "route" in scope:
        return scope["route"].path
    endpoint = scope.get("endpoint", ...)
    for route in scope["app"].router.routes:
        if isinstance(route, Mount) and route.app is endpoint:
            return f"{route.path}/{{path}}"
        if isinstance(route, Route) and route.endpoint is endpoint:
            return route.path
    return None


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = accepted_id(dict(scope["headers"]).get(HEADER.encode()))
        token = request_id.set(rid)
        status = 500  # what ServerErrorMiddleware answers if the app raises before responding
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != HEADER.encode()]
                message = {**message, "headers": [*headers, (HEADER.encode(), rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.observe_request(route_template(scope), scope["method"], status,
                                         time.perf_counter() - started)
        # Left set when the app raised: ServerErrorMiddleware logs and answers after us, with the id.
        request_id.reset(token)
