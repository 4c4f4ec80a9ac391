"""Per client (an API key, or the address when the service is open): token buckets for
requests and for compute (forward-equivalents, model loads among them), and a cap on open event
streams. Over a limit is a 429 with `Retry-After`. Event streams live in the event loop's thread;
compute is also taken from routes' threads (a job submission's model load), so buckets lock."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from typing import Callable

from fastapi import Request
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from core.errors import GazerError
from service.addresses import address_group
from service.auth import Caller, KeyStore, authenticate
from service.errors import gazer_error_response


class TooManyRequests(GazerError):
    code = "too-many-requests"
    status = 429


def too_many(detail: str, wait_seconds: float) -> TooManyRequests:
    return TooManyRequests(detail, headers={"Retry-After": str(max(1, math.ceil(wait_seconds)))})


class TokenBucket:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = time.monotonic()

    def take(self, amount: float) -> float:
        """Takes `amount` and returns 0, or takes nothing and returns the seconds until it could."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if amount <= self.tokens:
            self.tokens -= amount
            return 0.0
        return (amount - self.tokens) / self.rate


class RateLimiter:
    """One bucket per client, the `max_clients` most recently seen kept (bounded memory: a
    client forgotten starts again with a full bucket)."""

    def __init__(self, what: str, rate: float, burst: float, max_clients: int = 10_000) -> None:
        self.what = what
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, client: str, amount: float = 1.0) -> None:
        if amount > self.burst:
            raise too_many(f"this needs {amount:g} {self.what} at once; a client may hold at most {self.burst:g}",
                           amount / self.rate)
        with self._lock:
            bucket = self._buckets.pop(client, None) or TokenBucket(self.rate, self.burst)
            self._buckets[client] = bucket
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            wait = bucket.take(amount)
        if wait > 0:
            raise too_many(f"over the limit of {self.rate:g} {self.what} per second (bursts of {self.burst:g}); "
                           f"retry in {wait:.1f} s", wait)


    def give_back(self, client: str, amount: float) -> None:
        """Returns what `take` took for work that was refused before it ran."""
        with self._lock:
            if (bucket := self._buckets.get(client)) is not None:
                bucket.tokens = min(bucket.burst, bucket.tokens + amount)


class StreamSlots:
    """Open event streams, in all and per client."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self._open: dict[str, int] = {}

    def acquire(self, client: str) -> Callable[[], None]:
        """Takes a slot (or raises 429) and returns what gives it back (once, however often called):
        the stream holds it while it runs, after the route has returned."""
        if sum(self._open.values()) >= self.total:
            raise too_many(f"all {self.total} event streams are open; poll GET /v1/jobs/ID or retry later", 5)
        if self._open.get(client, 0) >= self.per_client:
            raise too_many(f"this client already has {self.per_client} event streams open; close one first", 5)
        self._open[client] = self._open.get(client, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._open[client] -= 1
                if not self._open[client]:
                    del self._open[client]

        return release


def client_id(caller: Caller, request: Request) -> str:
    """Whom the limits count against: the key, or the address when the service is open."""
    return _client(caller, request.client.host if request.client else None)


def scope_caller(keys: KeyStore | None, scope: Scope) -> tuple[Caller, str]:
    """A request's caller and client_id, from its ASGI scope, before its body is read (a
    middleware's); Unauthorized as authenticate."""
    caller = authenticate(keys, Headers(scope=scope))
    return caller, _client(caller, scope["client"][0] if scope.get("client") else None)


def _client(caller: Caller, address: str | None) -> str:
    if caller.owner is not None:
        return key_client(caller.owner)
    return f"address:{address_group(address) if address else 'unknown'}"


def key_client(owner: str) -> str:
    return f"key:{owner}"


class LimitRequestsBeforeBodies:
    """One token of the client's request bucket for each /v1 request, taken before its body is
    read: a client over its rate gets its 429 without the service taking in its upload first.
    Placed inside KeysBeforeBodies (a key is known and good by then) and RefuseBeforeBodies
    (a request refused for a full queue or a client's share is not charged)."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter, keys: KeyStore | None) -> None:
        self.app = app
        self.limiter = limiter
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (scope["path"] + "/").startswith("/v1/"):
            try:
                self.limiter.take(scope_caller(self.keys, scope)[1])
            except GazerError as refused:
                await gazer_error_response(refused)(scope, receive, send)
                return
        await self.app(scope, receive, send)
