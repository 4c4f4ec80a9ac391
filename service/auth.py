"""Who is calling: API keys (`Authorization: Bearer` or `X-API-Key`) checked against the key
file of `GAZER_API_KEYS`, and the scope each route needs. Without a key file the service is
open (and binds loopback only, see service.__main__)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable

from fastapi import Depends, Request
from starlette.datastructures import Headers

from core.errors import GazerError, NotFound
from schemas.api_keys import KeyFile, KeyRecord, find_key, read_key_file


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
    effect without a restart."""

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
                self._keys = read_key_file(self.path) if stamp else KeyFile()
                self._stamp = stamp
            return self._keys


def presented_key(headers: Headers) -> str | None:
    """The API key in a request's `Authorization: Bearer` or `X-API-Key` header, if any."""
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key") or None


async def get_caller(request: Request) -> Caller:
    store: KeyStore | None = request.app.state.keys
    if store is None:
        return Caller(None)
    key = presented_key(request.headers)
    if key is None:
        raise Unauthorized("this service needs an API key: send `Authorization: Bearer KEY` or `X-API-Key: KEY`",
                           headers={"WWW-Authenticate": "Bearer"})
    record = find_key(store.current(), key)
    if record is None:
        raise Unauthorized("the API key is not known", headers={"WWW-Authenticate": "Bearer"})
    return Caller(record)


CallerDep = Annotated[Caller, Depends(get_caller)]


def requires(scope: str) -> Callable:
    """A dependency that lets through only callers whose key holds `scope` (or `admin`)."""
    async def check(caller: CallerDep) -> Caller:
        if not caller.grants(scope):
            raise Forbidden(f"this needs a key with the {scope!r} scope; this key has "
                            f"{', '.join(caller.key.scopes) if caller.key else 'none'}")
        return caller

    return check
