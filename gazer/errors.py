"""The one exception the client raises for an error answer from the API."""

from __future__ import annotations

import json
from typing import Any

import httpx

PROBLEM_FIELDS = ("type", "title", "status", "detail")


class ApiError(Exception):
    """An RFC 9457 problem: `type`, `title`, `status`, `detail`, and in `extras` whatever else
    the body carried (`errors`, the offending fields; `valid`, the accepted values)."""

    def __init__(self, type: str, title: str, status: int, detail: str, extras: dict[str, Any] | None = None):
        super().__init__(f"{status} {title}: {detail}")
        self.type = type
        self.title = title
        self.status = status
        self.detail = detail
        self.extras = extras or {}

    @classmethod
    def from_response(cls, response: httpx.Response) -> "ApiError":
        """From a problem+json body; an answer without one (a proxy's page) keeps its text as
        the detail."""
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            return cls("about:blank", response.reason_phrase, response.status_code, response.text[:500])
        return cls.from_problem(body, response.status_code, response.reason_phrase)

    @classmethod
    def from_problem(cls, body: dict[str, Any], status: int = 500, title: str = "Error") -> "ApiError":
        """From a problem's fields (an answer's body, or an event stream's `error`); `status`
        and `title` where it names none."""
        extras = {key: value for key, value in body.items() if key not in PROBLEM_FIELDS}
        return cls(str(body.get("type", "about:blank")), str(body.get("title", title)),
                   int(body.get("status", status)), str(body.get("detail", "")), extras)

    def problem(self) -> dict[str, Any]:
        """The problem as the server sent it."""
        return {"type": self.type, "title": self.title, "status": self.status, "detail": self.detail, **self.extras}


class BadAnswer(ApiError):
    """An answer this client cannot read: larger than it reads into memory, or an event stream that
    breaks the protocol. `status` is the answer's HTTP status."""

    def __init__(self, detail: str, status: int = 200) -> None:
        super().__init__("about:blank", "Unexpected answer", status, detail)
