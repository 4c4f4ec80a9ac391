"""A request still running when the API's stop has waited GAZER_STOP_SECONDS for it is cancelled
by uvicorn, which then answered a plain-text 500 "Internal Server Error": it gets a 503 saying the
service is stopping, with Retry-After, instead."""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import ServiceBusy
from service.admission import RETRY_AFTER_SECONDS
from service.errors import gazer_error_response


class AnswerRequestsCutByTheStop:
    """Placed inside RequestContext, so that the 503 carries the request id and is counted. Only
    uvicorn cancels a request's task (a client that goes is told through `receive`), and it does so
    only at the end of a stop's grace period."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answered = False

        async def noting_send(message: Message) -> None:
            nonlocal answered
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, noting_send)
        except asyncio.CancelledError:
            if answered:  # the answer has begun: nothing else can be said on it
                raise
            stopping = ServiceBusy("the service is stopping and could not finish this request within "
                                   "GAZER_STOP_SECONDS; send it again once the service is back",
                                   headers={"Retry-After": str(RETRY_AFTER_SECONDS), "Connection": "close"})
            await gazer_error_response(stopping)(scope, receive, send)
