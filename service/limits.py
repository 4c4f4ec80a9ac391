"""Refuse request bodies over the configured size before anything reads them."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from core.errors import PayloadTooLarge
from service.errors import problem_response


class RequestSizeLimit:
    """Answers 413 when Content-Length is over the limit, and stops reading a body sent
    without a length (chunked) with a 413 as soon as it passes the limit. `per_path`: other
    limits for some paths (matched exactly)."""

    def __init__(self, app: ASGIApp, max_bytes: int, per_path: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.per_path = per_path or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope["path"].rstrip("/"), self.max_bytes)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            response = problem_response(PayloadTooLarge.status, PayloadTooLarge.code,
                                        f"the request body is {int(declared)} bytes; the limit is {limit}")
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise HTTPException(PayloadTooLarge.status, f"the request body is over the limit of {limit} bytes")
            return message

        await self.app(scope, limited_receive, send)
