"""RFC 9457 problem details, the body of every error: the API's and a failed job's."""

from __future__ import annotations

from pydantic import BaseModel

TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
          405: "Method not allowed", 406: "Not acceptable", 408: "Request timeout", 409: "Conflict",
          413: "Content too large", 416: "Range not satisfiable", 422: "Unprocessable content",
          429: "Too many requests",
          431: "Request header fields too large",
          500: "Internal server error", 501: "Not implemented", 503: "Service unavailable", 507: "Insufficient storage"}

# Messages echo what a client sent (an unknown layer, a parameter's name); a problem holds at
# most this much of each text, a long one keeping its start and end around an ellipsis.
MAX_TEXT_CHARS = 1000
MAX_NAME_CHARS = 200
MAX_FIELD_ERRORS = 50
MAX_VALID_VALUES = 1000


class FieldError(BaseModel):
    field: str
    message: str
    # a refused file's own status, where a request's files are refused each for its reason (413, 422)
    status: int | None = None


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None
    valid: list[str] | None = None
    # an explanation over its budget: what it costs and what it may cost, in forward passes
    cost: int | None = None
    budget: int | None = None
    # a job over a worker's memory: its estimate and the worker's limit, in bytes
    estimate_bytes: int | None = None
    limit_bytes: int | None = None


def problem(status: int, code: str, detail: str, errors: list[FieldError] | None = None,
            valid: list[str] | None = None, cost: int | None = None, budget: int | None = None,
            estimate_bytes: int | None = None, limit_bytes: int | None = None) -> Problem:
    """The one builder: `type` from the stable `code`, `title` from the status; texts and lists
    bounded (MAX_*), however much of a request they echo."""
    if errors is not None:
        errors = [FieldError(field=shorten(error.field, MAX_NAME_CHARS), message=shorten(error.message, MAX_TEXT_CHARS),
                             status=error.status) for error in errors[:MAX_FIELD_ERRORS]]
    if valid is not None:
        valid = [shorten(value, MAX_NAME_CHARS) for value in valid[:MAX_VALID_VALUES]]
    return Problem(type=f"/problems/{code}", title=TITLES.get(status, "Error"), status=status,
                   detail=shorten(detail, MAX_TEXT_CHARS), errors=errors, valid=valid, cost=cost, budget=budget,
                   estimate_bytes=estimate_bytes, limit_bytes=limit_bytes)


def shorten(text: str, limit: int) -> str:
    """`text` itself, or its first two thirds and last third of `limit` around an ellipsis."""
    if len(text) <= limit:
        return text
    tail = (limit - 1) // 3
    return f"{text[:limit - 1 - tail]}…{text[len(text) - tail:]}"
