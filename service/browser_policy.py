"""What every answer tells a browser: no page may show ours in a frame (CSP frame-ancestors, and
X-Frame-Options for older browsers; a page of another port of the same host framed the web page,
whose stored key then deleted a model at two clicks), no content sniffing, no referrer, and a
content security policy."""

from __future__ import annotations

# The web page loads its own scripts and styles (and sets style attributes), draws images from
# data: and blob: URLs, and calls its own origin; the API documentation pages (Swagger UI, ReDoc)
# start from inline scripts, and ReDoc runs a worker from a blob: URL.
PAGE_POLICY = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
               "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
DOCS_POLICY = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' data: blob:; worker-src 'self' blob:; object-src 'none'; base-uri 'none'; "
               "frame-ancestors 'none'")
DOCS_PATHS = ("/docs", "/redoc")


def browser_headers(route_path: str) -> dict[str, str]:
    """The headers for an answer to `route_path` (the path below any root path)."""
    policy = DOCS_POLICY if route_path.rstrip("/") in DOCS_PATHS else PAGE_POLICY
    return {"content-security-policy": policy, "x-frame-options": "DENY", "x-content-type-options": "nosniff",
            "referrer-policy": "no-referrer"}
