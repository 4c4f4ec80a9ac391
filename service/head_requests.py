"""HEAD answered as GET without its body, as HTTP asks of a server that answers GET (RFC 9110,
9.1): uptime monitors and `curl -I` send it, and FastAPI's GET routes alone answered it 405. A
route that declares HEAD itself (an artifact's, which then reads no file) answers its own."""

from __future__ import annotations

from starlette.routing import Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    def __init__(self, app: ASGIApp, router: Router) -> None:
        self.app = app
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD" or self._answered_as_head(scope):
            await self.app(scope, receive, send)
            return
        answered = False

        async def headers_only(message: Message) -> None:
            """The answer ends with its headers: the server then tells the app its client has
            gone, which stops a streamed one (an event stream would run until its job ended,
            holding the connection)."""
            nonlocal answered
            if answered:
                return
            await send(message)
            if message["type"] == "http.response.start":
                answered = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        as_get = {**scope, "method": "GET"}
        try:
            await self.app(as_get, receive, headers_only)
        finally:  # the route that answered, for the request's metrics
            scope.update({key: as_get[key] for key in ("route", "endpoint") if key in as_get})

    def _answered_as_head(self, scope: Scope) -> bool:
        return any(route.matches(scope)[0] is Match.FULL for route in self.router.routes)
