"""RFC 9457 problem details, the body of every error: the API's and a failed job's."""

from __future__ import annotations

from pydantic import BaseModel

TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
          405: "Method not allowed", 406: "Not acceptable", 408: "Request timeout", 409: "Conflict",
          413: "Content too large", 422: "Unprocessable content", 429: "Too many requests",
          500: "Internal server error", 503: "Service unavailable", 507: "Insufficient storage"}


class FieldError(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None
    valid: list[str] | None = None


def problem(status: int, code: str, detail: str, errors: list[FieldError] | None = None,
            valid: list[str] | None = None) -> Problem:
    """The one builder: `type` from the stable `code`, `title` from the status."""
    return Problem(type=f"/problems/{code}", title=TITLES.get(status, "Error"), status=status, detail=detail,
                   errors=errors, valid=valid)
