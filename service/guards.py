"""What a browser could be tricked into sending. A page of another origin may not call the API:
its simple form posts need no preflight, so CORS headers alone would not stop them; only the
origins of `GAZER_CORS_ORIGINS` may. The Host header must name this service, so that a rebound
DNS name cannot make a page's origin look like ours. And no page may show ours in a frame: a
page of another port of the same host framed the web page, whose stored key then deleted a model
at two clicks (clickjacking)."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


# The web page loads its own scripts and styles (and sets style attributes), draws images from
# data: and blob: URLs, and calls its own origin; the API documentation pages (Swagger UI, ReDoc)
# start from inline scripts, and ReDoc runs a worker from a blob: URL.
PAGE_POLICY = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
               "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
DOCS_POLICY = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' data: blob:; worker-src 'self' blob:; object-src 'none'; base-uri 'none'; "
               "frame-ancestors 'none'")
DOCS_PATHS = ("/docs", "/redoc")


class BrowserHeaders:
    """On every answer: no framing (CSP frame-ancestors, and X-Frame-Options for older browsers),
    no content sniffing, no referrer, and a content security policy."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = DOCS_POLICY if scope["path"].rstrip("/") in DOCS_PATHS else PAGE_POLICY

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("content-security-policy", policy)
                headers.setdefault("x-frame-options", "DENY")
                headers.setdefault("x-content-type-options", "nosniff")
                headers.setdefault("referrer-policy", "no-referrer")
            await send(message)

        await self.app(scope, receive, send_with_headers)
