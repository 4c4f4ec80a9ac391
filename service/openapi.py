"""What the generated OpenAPI schema leaves out or gets wrong, put right after FastAPI makes it:
an error is problem+json alone (the routes' `Problem` model made FastAPI list application/json
too, which no error is sent as); the headers a client reads (Location on what a POST creates,
Retry-After on 429 and 503, WWW-Authenticate on 401); a job's artifact as a file of any type; and
an open service's schema names no security schemes (service.auth declares them for the /v1
routes), since its routes take no key."""

from __future__ import annotations

from typing import Any, Callable

from service.errors import PROBLEM_JSON

ARTIFACT = "/v1/jobs/{job_id}/artifacts/{name}"
_HEADERS = {
    "Location": "where what was created is read (GET)",
    "Retry-After": "seconds to wait before trying again",
    "WWW-Authenticate": "Bearer: the key goes in `Authorization: Bearer KEY` (or `X-API-Key`)",
}
_PROBLEM_HEADERS = {"401": ["WWW-Authenticate"], "429": ["Retry-After"], "503": ["Retry-After"]}


def _header(name: str) -> dict[str, Any]:
    return {"description": _HEADERS[name], "schema": {"type": "string"}}


def corrected(schema: dict[str, Any], keys_required: bool) -> dict[str, Any]:
    if not keys_required:
        schema.get("components", {}).pop("securitySchemes", None)
    for operations in schema.get("paths", {}).values():
        for method, operation in operations.items():
            if not keys_required:
                operation.pop("security", None)
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if status.isdigit() and int(status) >= 400 and PROBLEM_JSON in content:
                    content.pop("application/json", None)
                headers = _PROBLEM_HEADERS.get(status, []) if PROBLEM_JSON in content else []
                if method == "post" and status in ("201", "202"):
                    headers = ["Location"]
                for name in headers:
                    response.setdefault("headers", {})[name] = _header(name)
    artifact = schema.get("paths", {}).get(ARTIFACT, {}).get("get", {}).get("responses", {}).get("200")
    if artifact is not None:
        artifact["description"] = "the file, its type by its name's ending (PNG, CSV, zip, JSON)"
        artifact["content"] = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    return schema


def correcting(generate: Callable[[], dict[str, Any]], keys_required: bool) -> Callable[[], dict[str, Any]]:
    """app.openapi, corrected once, when first made (FastAPI keeps what it made and gives it again)."""
    made: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        if not made:
            made.append(corrected(generate(), keys_required))
        return made[0]
    return openapi
