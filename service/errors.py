"""Every error leaves as application/problem+json; a domain error carries its own status."""

from __future__ import annotations

import logging
import re

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import get_route_path

from core import errors
from infra.logs import request_id
from schemas.problems import TITLES, FieldError, Problem, problem
from service.browser_policy import browser_headers

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
# What a 503 (busy, queue or model not ready) tells the client to wait before trying again.
RETRY_AFTER_SECONDS = 5
# The problems any /v1 route can answer with (auth, Host/Origin guards, size limit, rate limits,
# unknown names, conflicts, bad values, an unwritable data folder, busy, full disk), documented in
# the OpenAPI schema.
PROBLEM_RESPONSES: dict[int | str, dict] = {
    status: {"model": Problem, "description": TITLES[status],
             "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
    for status in (400, 401, 403, 404, 406, 408, 409, 413, 422, 429, 500, 503, 507)}


def problem_response(status: int, code: str, detail: str, errors_: list[FieldError] | None = None,
                     valid: list[str] | None = None, cost: int | None = None, budget: int | None = None,
                     estimate_bytes: int | None = None, limit_bytes: int | None = None) -> JSONResponse:
    body = problem(status, code, detail, errors_, valid, cost, budget, estimate_bytes, limit_bytes)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, media_type=PROBLEM_JSON)


async def _gazer_error(request: Request, error: errors.GazerError) -> JSONResponse:
    return gazer_error_response(error)


def gazer_error_response(error: errors.GazerError) -> JSONResponse:
    """A domain error's problem, with the headers it carries (and Retry-After on a 503)."""
    field = error.extra.get("field")
    field_errors = [FieldError(field=str(file), message=said, status=status)
                    for file, said, status in error.extra["file_errors"]] if "file_errors" in error.extra \
        else [FieldError(field=str(field), message=error.detail)] if field else None
    valid = error.extra.get("valid")
    response = problem_response(error.status, error.code, error.detail, field_errors,
                                [str(v) for v in valid] if valid else None, error.extra.get("cost"),
                                error.extra.get("budget"), error.extra.get("estimate_bytes"),
                                error.extra.get("limit_bytes"))
    response.headers.update(error.extra.get("headers", {}))
    if error.status == 503:
        response.headers.setdefault("retry-after", str(RETRY_AFTER_SECONDS))
    return response


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    messages: dict[str, list[str]] = {}  # a union's members each refuse the value: one field, their words joined
    for item in error.errors():
        messages.setdefault(_field_name(item), []).append(_message(item))
    field_errors = [FieldError(field=field, message=_either(said)) for field, said in messages.items()]
    detail = "; ".join(f"{item.field}: {item.message}" for item in field_errors)
    return problem_response(422, "validation-error", detail, field_errors)


# how pydantic names a union's member in an error's location: `constrained-float`, `literal['auto']`
_UNION_MEMBER = re.compile(r"[a-z]+-[a-z-]+(\[.*\])?|[a-z]+\[.*\]")


def _field_name(item: dict) -> str:
    """`steps`, `target.classes.0`: the field as the routes' own checks name it, without where
    it came from (body, query, path) or which member of a union refused it (`lr`, not
    `lr.constrained-float`); `body` for the body as a whole, or JSON that does not parse."""
    location, *inside = [str(part) for part in item["loc"]]
    if not inside or item["type"] == "json_invalid":  # ("body", 17): 17 is the character where parsing failed
        return location
    return ".".join(part for part in inside if not _UNION_MEMBER.fullmatch(part))


def _message(item: dict) -> str:
    if "Expected UploadFile" in item["msg"]:  # a text part where a file belongs: `-F file=x`, not `-F file=@x`
        return f"must be a file, sent as a file part (curl: -F {_field_name(item).split('.')[0]}=@PATH), not as text"
    if item["type"] in ("float_parsing", "int_parsing") and isinstance(item.get("input"), str):
        return f"{item['msg']}, not {item['input'][:40]!r}"  # `mean=[0.5,0.5,0.5]`: '[0.5' and '0.5]'
    return item["msg"]


def _either(messages: list[str]) -> str:
    """"Input should be a finite number", "Input should be 'auto'" -> "... a finite number, or 'auto'"."""
    first, *others = messages
    prefix = "Input should be "
    return ", or ".join([first, *(message.removeprefix(prefix) if first.startswith(prefix) else message
                                  for message in others)])


async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    # the two that the body limits raise as HTTPExceptions, while the body is read
    code = {errors.PayloadTooLarge.status: errors.PayloadTooLarge.code, errors.StorageFull.status: errors.StorageFull.code
            }.get(error.status_code) or TITLES.get(error.status_code, "http-error").lower().replace(" ", "-")
    detail = str(error.detail)
    if error.status_code == 404 and detail == "Not Found":  # Starlette's router: no route has the path
        path = request.url.path
        where = "/v1/ twice: the API's paths start with one; see /docs" if path.startswith("/v1/v1/") else \
            "see /docs" if path.startswith("/v1/") else "the API's paths start with /v1/: see /docs"
        detail = f"no route is at {path[:200]} ({where})"
    response = problem_response(error.status_code, code, detail)
    response.headers.update(error.headers or {})
    if error.status_code == 405 and (allowed := _documented_methods(request)):
        response.headers["allow"] = allowed  # Starlette names only the first matching route's methods
    return response


def _documented_methods(request: Request) -> str | None:
    """The methods the OpenAPI schema gives the most specific path template matching the request
    (`/v1/jobs/fine-tune` over `/v1/jobs/{job_id}`); None for paths outside the schema."""
    paths = request.app.openapi().get("paths", {})
    matching = [template for template in paths
                if re.fullmatch(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)), request.url.path)]
    if not matching:
        return None
    best = min(matching, key=lambda template: template.count("{"))
    return ", ".join(sorted(method.upper() for method in paths[best]))


async def _redis_error(request: Request, error: redis.RedisError) -> JSONResponse:
    """Redis (jobs, data set claims, quotas) away: a 503 to retry, one warning line, not a 500
    with a traceback. Routes that can say more (a submit) raise QueueUnavailable themselves."""
    log.warning("Redis cannot be reached for %s %s: %s", request.method, request.url.path, error)
    response = problem_response(503, "queue-unavailable", f"the job store (Redis) cannot be reached now ({error}); "
                                                          f"retry shortly")
    response.headers["retry-after"] = str(RETRY_AFTER_SECONDS)
    return response


async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    response = problem_response(500, "internal-error", "the server failed to handle this request; it is logged")
    # answered outside every middleware, RequestContext and BrowserHeaders among them
    if (rid := request_id.get()) is not None:
        response.headers["x-request-id"] = rid
    response.headers.update(browser_headers(get_route_path(request.scope)))
    return response


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(errors.GazerError, _gazer_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(redis.RedisError, _redis_error)
    app.add_exception_handler(Exception, _unexpected_error)
