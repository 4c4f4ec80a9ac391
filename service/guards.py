"""What a browser could be tricked into sending. A page of another origin may not call the API:
its simple form posts need no preflight, so CORS headers alone would not stop them; only the
origins of `GAZER_CORS_ORIGINS` may. And the Host header must name this service, so that a
rebound DNS name cannot make a page's origin look like ours."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

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
        if scope["type"] == "http" and self.allowed is not None:
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if host_name(host).lower() not in self.allowed:
                response = problem_response(400, "unknown-host", f"Host {host!r} is not served here; "
                                                                 f"GAZER_ALLOWED_HOSTS lists the names answered")
                await response(scope, receive, send)
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
