"""Refuse request bodies over the configured size before anything reads them."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import problem_response


class RequestSizeLimit:
    """Answers 413 when Content-Length is over the limit; bodies sent without a length are
    cut off (and fail to parse, 400) once they pass it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = problem_response(413, "payload-too-large",
                                        f"the request body is {int(declared)} bytes; "
                                        f"the limit is {self.max_bytes}")
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise ValueError(f"request body over {self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)
