"""Who is calling: API keys (`Authorization: Bearer` or `X-API-Key`) checked against the key
file of `GAZER_API_KEYS`, and the scope each route needs. Without a key file the service is
open (and binds loopback only, see service.__main__)."""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPBearer
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from core.errors import GazerError, NotFound
from schemas.api_keys import KeyFile, KeyRecord, find_key, read_key_file, why_unreadable
from service.errors import gazer_error_response

log = logging.getLogger(__name__)


class Unauthorized(GazerError):
    code = "unauthorized"
    status = 401


class Forbidden(GazerError):
    code = "forbidden"
    status = 403


@dataclass(frozen=True)
class Caller:
    """The key a request came with; `key is None` when the service runs open."""

    key: KeyRecord | None

    @property
    def owner(self) -> str | None:
        """What jobs and data sets record as their owner."""
        return self.key.id if self.key else None

    def grants(self, scope: str) -> bool:
        return self.key is None or self.key.grants(scope)

    @property
    def sees_all(self) -> bool:
        return self.key is None or self.key.grants("admin")

    def sees(self, owner: str | None) -> bool:
        """Whether a job or data set of `owner` exists for this caller (others get 404)."""
        return self.sees_all or owner == self.owner

    def check_owns(self, owner: str | None, what: str) -> None:
        if not self.sees(owner):
            raise NotFound(f"no {what}")


class KeyStore:
    """The key file, read again when it changes on disk, so that `gazer keys create` takes
    effect without a restart. A change that cannot be read (a bad hand edit, say) is logged
    once, and the keys read before it stay in force."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._keys = KeyFile()

    def current(self) -> KeyFile:
        try:
            status = self.path.stat()
            stamp = (status.st_mtime_ns, status.st_size)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                self._stamp = stamp
                if stamp is None and self._keys.keys:  # fails closed; say so, or every 401 is a mystery
                    log.error("the key file %s is gone: no key is accepted until it is back", self.path)
                try:
                    self._keys = read_key_file(self.path) if stamp else KeyFile()
                except (OSError, ValueError) as error:
                    log.error("the key file %s cannot be read (%s); the %d keys read before stay in force until "
                              "it is fixed", self.path, why_unreadable(error), len(self._keys.keys))
            return self._keys


def presented_key(headers: Headers) -> str | None:
    """The API key in a request's `Authorization: Bearer` or `X-API-Key` header, if any."""
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key") or None


def authenticate(store: KeyStore | None, headers: Headers) -> Caller:
    """Who the request's headers say is calling; Unauthorized where keys are required and they
    name no key the key file holds."""
    if store is None:
        return Caller(None)
    key = presented_key(headers)
    if key is None:
        raise Unauthorized("this service needs an API key: send `Authorization: Bearer KEY` or `X-API-Key: KEY`",
                           headers={"WWW-Authenticate": "Bearer"})
    record = find_key(store.current(), key)
    if record is None:
        raise Unauthorized("the API key is not known", headers={"WWW-Authenticate": "Bearer"})
    return Caller(record)


def check_scope(caller: Caller, scope: str) -> None:
    if not caller.grants(scope):
        raise Forbidden(f"this needs a key with the {scope!r} scope; this key has "
                        f"{', '.join(caller.key.scopes) if caller.key else 'none'}")


# Declared for the OpenAPI schema, so that /docs can send a key ("Authorize"); presented_key
# reads the headers itself.
_BEARER = HTTPBearer(auto_error=False, description="an API key (`gazer keys create`), where the service needs keys")
_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="the same key, in a header of its own")


async def get_caller(request: Request, _bearer: Annotated[object, Depends(_BEARER)],
                     _header: Annotated[object, Depends(_KEY_HEADER)]) -> Caller:
    return authenticate(request.app.state.keys, request.headers)


CallerDep = Annotated[Caller, Depends(get_caller)]


def requires(scope: str) -> Callable:
    """A dependency that lets through only callers whose key holds `scope` (or `admin`)."""
    async def check(caller: CallerDep) -> Caller:
        check_scope(caller, scope)
        return caller

    return check


# The scope each /v1 route requires, by method (None: any) and path: what the routers' `requires`
# dependencies say, told here from the request line alone, before the body is read.
ROUTE_SCOPES = (("POST", re.compile(r"/v1/models/?"), "admin"),
                (None, re.compile(r"/v1/models/[^/]+/default/?"), "admin"),  # PUT pins, DELETE unpins
                ("DELETE", re.compile(r"/v1/models/[^/]+/?"), "jobs"),  # and the name's own key (quotas)
                (None, re.compile(r"/v1/models(/.*)?"), "predict"),
                (None, re.compile(r"/v1/(datasets|jobs)(/.*)?"), "jobs"))


def required_scope(method: str, path: str) -> str | None:
    for only_method, pattern, scope in ROUTE_SCOPES:
        if only_method in (None, method) and pattern.fullmatch(path):
            return scope
    return None


class KeysBeforeBodies:
    """Where keys are required, a /v1 request without a known key (401), or whose key lacks the
    scope its route requires (403), is answered before its body is read. FastAPI reads and
    spools a form before it solves a route's dependencies, so otherwise anyone could make the
    service take in a model-sized upload only to refuse it. The routes' own checks still run."""

    def __init__(self, app: ASGIApp, keys: KeyStore | None) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.keys is not None and scope["type"] == "http" and (scope["path"] + "/").startswith("/v1/"):
            try:
                caller = authenticate(self.keys, Headers(scope=scope))
                if needed := required_scope(scope["method"], scope["path"]):
                    check_scope(caller, needed)
            except GazerError as refused:
                await gazer_error_response(refused)(scope, receive, send)
                return
        await self.app(scope, receive, send)
