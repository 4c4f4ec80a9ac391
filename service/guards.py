"""What a browser could be tricked into sending. A page of another origin may not call the API:
its simple form posts need no preflight, so CORS headers alone would not stop them; only the
origins of `GAZER_CORS_ORIGINS` may. The Host header must name this service, so that a rebound
DNS name cannot make a page's origin look like ours. And every answer carries the headers of
service.browser_policy (no framing, no sniffing, a content security policy)."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.routing import get_route_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.browser_policy import browser_headers
from service.errors import problem_response


def host_name(host: str) -> str:
    """`example.com:8000` -> `example.com`; `[::1]:8000` -> `[::1]`."""
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class RefuseUnknownHosts:
    def __init__(self, app: ASGIApp, allowed: list[str]) -> None:
        self.app = app
        self.allowed = None if "*" in allowed else {name.lower() for name in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            hosts = [value.decode("latin-1") for name, value in scope["headers"] if name == b"host"]
            refusal = None
            if len(hosts) > 1:  # RFC 9112 3.2; the checks here and the app could read different ones
                refusal = f"a request names its Host once; this one names {len(hosts)}"
            elif self.allowed is not None and host_name(host := (hosts or [""])[0]).lower() not in self.allowed:
                refusal = f"Host {host!r} is not served here; GAZER_ALLOWED_HOSTS lists the names answered"
            if refusal is not None:
                await problem_response(400, "unknown-host", refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class RefuseForeignOrigins:
    def __init__(self, app: ASGIApp, allowed: list[str]) -> None:
        self.app = app
        self.allowed = set(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            origin = headers.get(b"origin", b"").decode("latin-1").rstrip("/")
            own = f"{scope.get('scheme', 'http')}://{headers.get(b'host', b'').decode('latin-1')}"
            if origin and origin != own and origin not in self.allowed:
                response = problem_response(403, "foreign-origin", f"requests from pages of {origin} are refused; "
                                                                   f"GAZER_CORS_ORIGINS lists the allowed origins")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)



class BrowserHeaders:
    """browser_headers on every answer (but a 500 of an unhandled error, which Starlette answers
    outside every middleware: its handler adds them)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        added = browser_headers(get_route_path(scope))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in added.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
