"""Every error leaves as application/problem+json; a domain error carries its own status."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core import errors
from infra.logs import request_id
from schemas.problems import TITLES, FieldError, problem

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
# What a 503 (busy, queue or model not ready) tells the client to wait before trying again.
RETRY_AFTER_SECONDS = 5


def problem_response(status: int, code: str, detail: str, errors_: list[FieldError] | None = None,
                     valid: list[str] | None = None) -> JSONResponse:
    body = problem(status, code, detail, errors_, valid)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, media_type=PROBLEM_JSON)


async def _gazer_error(request: Request, error: errors.GazerError) -> JSONResponse:
    field = error.extra.get("field")
    field_errors = [FieldError(field=str(field), message=error.detail)] if field else None
    valid = error.extra.get("valid")
    response = problem_response(error.status, error.code, error.detail, field_errors,
                                [str(v) for v in valid] if valid else None)
    response.headers.update(error.extra.get("headers", {}))
    if error.status == 503:
        response.headers.setdefault("retry-after", str(RETRY_AFTER_SECONDS))
    return response


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    field_errors = [FieldError(field=".".join(str(part) for part in item["loc"]), message=item["msg"])
                    for item in error.errors()]
    detail = "; ".join(f"{item.field}: {item.message}" for item in field_errors)
    return problem_response(422, "validation-error", detail, field_errors)


async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    code = errors.PayloadTooLarge.code if error.status_code == errors.PayloadTooLarge.status else \
        TITLES.get(error.status_code, "http-error").lower().replace(" ", "-")
    return problem_response(error.status_code, code, str(error.detail))


async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    response = problem_response(500, "internal-error", "the server failed to handle this request; it is logged")
    if (rid := request_id.get()) is not None:  # answered outside RequestContext, which adds it elsewhere
        response.headers["x-request-id"] = rid
    return response


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(errors.GazerError, _gazer_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
