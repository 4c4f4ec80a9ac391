"""What the client raises: `ApiError` for an error answer from the API, `NoAnswer` where none came;
both are a `GazerError`."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pydantic

# A problem's own fields, and the type each must have for the body to be read as a problem.
PROBLEM_FIELDS = {"type": str, "title": str, "status": int, "detail": str}
SHOWN_CHARACTERS = 500  # of an answer that is not a problem, kept as the detail
BEGINNING_SHOWN = 80  # of an error answer that is not JSON (a proxy's page)


def shortened(text: str) -> str:
    return text if len(text) <= SHOWN_CHARACTERS else text[:SHOWN_CHARACTERS] + "..."


class GazerError(Exception):
    """Any error of the Gazer client: an error answer (ApiError), or none (NoAnswer)."""


class ApiError(GazerError):
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
        """From a problem+json body; JSON that is not a problem keeps its text, shortened, as the
        detail. An answer that is not JSON at all (a proxy's page, another server at the address) is
        a BadAnswer. A redirect says where to, since it is not followed."""
        if 300 <= response.status_code < 400:
            return cls("about:blank", response.reason_phrase, response.status_code,
                       f"a redirect to {response.headers.get('Location', 'nowhere')!r}, which this client does not "
                       f"follow: give the service's own address")
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return BadAnswer.not_json(response)
        return cls.from_problem(body, response.status_code, response.reason_phrase, response.text)

    @classmethod
    def from_problem(cls, body: Any, status: int = 500, title: str = "Error", raw: str | None = None) -> "ApiError":
        """From a problem's fields (an answer's body, or an event stream's `error`); `status`
        and `title` where it names none. A body that is not a problem (a status "five hundred")
        is kept as the detail, shortened: `raw`, the text it came as, else its JSON."""
        if not is_problem(body):
            return cls("about:blank", title, status, shortened(json.dumps(body) if raw is None else raw))
        extras = {key: value for key, value in body.items() if key not in PROBLEM_FIELDS}
        return cls(body.get("type", "about:blank"), body.get("title", title), body.get("status", status),
                   body.get("detail", ""), extras)

    def problem(self) -> dict[str, Any]:
        """The problem as the server sent it."""
        return {"type": self.type, "title": self.title, "status": self.status, "detail": self.detail, **self.extras}


def refusal_by_model(error: pydantic.ValidationError) -> str:
    """A wire model's refusal on one line: its first field, and how many more."""
    first, count = error.errors()[0], error.error_count()
    where = ".".join(map(str, first["loc"])) or "the answer"
    return f"not a {error.title}: {where}: {first['msg']}" + (f" (and {count - 1} more)" if count > 1 else "")


def is_problem(body: Any) -> bool:
    """An object whose problem fields, those it has, have their types (a status is a number, not true)."""
    return isinstance(body, dict) and all(
        isinstance(body[name], kind) and not isinstance(body[name], bool)
        for name, kind in PROBLEM_FIELDS.items() if name in body)


class BadAnswer(ApiError):
    """An answer this client cannot read: larger than it reads into memory, or an event stream that
    breaks the protocol. `status` is the answer's HTTP status."""

    def __init__(self, detail: str, status: int = 200) -> None:
        super().__init__("about:blank", "Unexpected answer", status, detail)

    @classmethod
    def not_json(cls, response: httpx.Response) -> "BadAnswer":
        """An error answer that is not JSON: its status, its type and how it begins, on one line."""
        request = response.request
        kind = response.headers.get("Content-Type") or "no Content-Type"
        begins = " ".join(response.text.split())[:BEGINNING_SHOWN]
        return cls(f"the answer to {request.method} {request.url.path} is {response.status_code} "
                   f"{response.reason_phrase}, not JSON ({kind}), beginning {begins!r}", response.status_code)


class EndedEarly(BadAnswer):
    """A job's event stream that the server closed before the job's `end` event."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"the event stream of job {job_id} ended before the job did")


class EmptyName(GazerError, ValueError):
    """An empty model name, job id or data set id, refused before any request: it would name another path."""


# Timeouts after the service was reached: it is up, but did not answer or take the upload in time.
ANSWER_TIMEOUTS = (httpx.ReadTimeout, httpx.WriteTimeout)


class NoAnswer(GazerError):
    """No answer, or not a whole one: the service could not be reached (down, a wrong address), or the
    connection broke or timed out. `url` is the service's, `timed_out` whether it was reached but did not
    answer in time; the httpx error is the `__cause__`."""

    def __init__(self, url: str, error: httpx.TransportError) -> None:
        self.url = url
        self.timed_out = isinstance(error, ANSWER_TIMEOUTS)
        super().__init__(f"{url} did not answer in time ({type(error).__name__}): {error}" if self.timed_out
                         else f"cannot reach {url}: {error}")
