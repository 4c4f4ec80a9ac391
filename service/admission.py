"""A bounded queue per model version: requests in flight for one beyond the limit are answered
503 with Retry-After at once, so that the latency of admitted requests stays bounded under
overload. A request takes its place in the route, once its caller is known and its upload read;
while the queue or the caller's share is already full, `RefuseBeforeBodies` answers before the
upload is read.
One client (a key, or an address when the service is open) holds at most its share of a
queue, of the explanation slots, of the explained pixels and of the data set ingests: beyond it,
429 with Retry-After, so that one client cannot fill them for everyone."""

from __future__ import annotations

import time
from collections import Counter
from contextlib import contextmanager
from typing import Iterator

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

from core.errors import GazerError, ServiceBusy
from core.storage import Storage
from service.auth import KeyStore
from service.errors import gazer_error_response
from service.http_protocol import OVER_CAPACITY
from service.quotas import check_dataset_quota
from service.rate_limits import scope_caller, too_many
from service.settings import Settings

RETRY_AFTER_SECONDS = 1


class ModelQueues:
    """Counts requests per model version (`m`, `m@1` and `m@01` count as one while `m` means
    version 1), and of those each client's; used on the event loop only, so it needs no lock."""

    # path spellings remembered (each one resolved to a model); past this many, forgotten
    MAX_SPELLINGS = 4096

    def __init__(self, limit: int, per_client: int) -> None:
        self.limit = limit
        self.per_client = per_client
        self.in_flight: Counter[str] = Counter()
        self.of_client: Counter[tuple[str, str]] = Counter()  # (version, client)
        # the model as a path spelt it -> (the version it meant, when the route last resolved it)
        self.versions: dict[str, tuple[str, float]] = {}

    def full(self, model: str) -> bool:
        """`model`: as a path spells it."""
        return self.in_flight[self._resolved(model)] >= self.limit

    def _resolved(self, model: str) -> str:
        """The version a path's spelling of a model meant when the route last resolved it. A
        spelling not resolved within RETRY_AFTER_SECONDS counts as a queue of its own (empty), so
        the route resolves it again: `m` pinned to a new version is not held to the old version's
        full queue for long."""
        version, resolved_at = self.versions.get(model, (model, 0.0))
        return version if time.monotonic() - resolved_at <= RETRY_AFTER_SECONDS else model

    def busy(self, model: str) -> ServiceBusy:
        return ServiceBusy(f"model {model!r} has {self.limit} requests in flight (GAZER_MAX_QUEUED_PER_MODEL); "
                           f"retry shortly", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    @contextmanager
    def admitted(self, model: str, version: str, client: str) -> Iterator[None]:
        """`model`: as the request's path spells it; `version`: the model version it resolved to
        (ModelSpec.ref); `client`: whom it counts against (rate_limits.client_id)."""
        if len(self.versions) >= self.MAX_SPELLINGS and model not in self.versions:
            self.versions.clear()
        self.versions[model] = (version, time.monotonic())
        if refused := self.refusal(model, client, version):
            raise refused
        with _counted(self.in_flight, version), _counted(self.of_client, (version, client)):
            yield

    def refusal(self, model: str, client: str, version: str | None = None) -> GazerError | None:
        """Why a request for `model` (as a path spells it; `version`, where the route resolved it)
        would not be admitted now: its queue full (503), or `client`'s share of it (429)."""
        version = version or self._resolved(model)
        if self.in_flight[version] >= self.limit:
            return self.busy(model)
        if self.of_client[version, client] >= self.per_client:
            return too_many(f"this client already has {self.per_client} requests in flight for model {model!r} "
                            f"(GAZER_MAX_QUEUED_PER_CLIENT); wait for an answer first", RETRY_AFTER_SECONDS)
        return None


class ClientShares:
    """How many of something (`what`, limited by the setting `setting`) each client holds: at
    most `per_client` at once, beyond which a 429 with Retry-After. Used on the event loop only,
    so it needs no lock."""

    def __init__(self, per_client: int, what: str, setting: str) -> None:
        self.per_client = per_client
        self.what = what
        self.setting = setting
        self.of_client: Counter[str] = Counter()

    @contextmanager
    def held(self, client: str) -> Iterator[None]:
        if refused := self.refusal(client):
            raise refused
        with _counted(self.of_client, client):
            yield

    def refusal(self, client: str) -> GazerError | None:
        if self.of_client[client] >= self.per_client:
            return too_many(f"this client already has {self.per_client} {self.what} ({self.setting}); wait for "
                            f"an answer first", RETRY_AFTER_SECONDS)
        return None


class ExplanationSlots(ClientShares):
    """Explanations in flight over all models, and of those each client's."""

    def __init__(self, total: int, per_client: int) -> None:
        super().__init__(per_client, "explanations in flight", "GAZER_MAX_EXPLANATIONS_PER_CLIENT")
        self.total = total
        self.in_use = 0

    @contextmanager
    def taken(self, client: str) -> Iterator[None]:
        if self.in_use >= self.total:
            raise ServiceBusy(f"all {self.total} explanation slots are busy; retry later",
                              headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        with self.held(client):
            self.in_use += 1
            try:
                yield
            finally:
                self.in_use -= 1


@contextmanager
def _counted(counts: Counter, key: object) -> Iterator[None]:
    """`counts[key]` one higher while the block runs; a key back at 0 is dropped."""
    counts[key] += 1
    try:
        yield
    finally:
        counts[key] -= 1
        if not counts[key]:
            del counts[key]


class PixelBudget:
    """Decoded pixels that the explanations in flight in this process hold together, and of
    those each client's: an explanation keeps its images decoded until its pictures are drawn,
    and a few small files can decode to gigabytes. Beyond the budget, 503 with Retry-After at
    once; beyond a client's share, 429. A request holds the pixels its images decode to (their
    declared size, less where a JPEG is decoded at a reduced scale), at most the whole budget
    (and at most its client's share of it), so that one within GAZER_MAX_REQUEST_PIXELS is served
    alone. Used on the event loop only, so it needs no lock."""

    def __init__(self, limit: int, per_client: int) -> None:
        self.limit = limit
        self.per_client = per_client
        self.held = 0
        self.of_client: Counter[str] = Counter()

    @contextmanager
    def holding(self, pixels: int, client: str) -> Iterator[None]:
        pixels = min(pixels, self.limit)
        share = min(pixels, self.per_client)
        if self.held + pixels > self.limit:
            raise ServiceBusy(f"the explanations in flight hold {self.held} decoded pixels and this request's images "
                              f"decode to {pixels}, past GAZER_MAX_EXPLAINED_PIXELS ({self.limit}); retry later",
                              headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        if self.of_client[client] + share > self.per_client:
            raise too_many(f"this client's explanations in flight hold {self.of_client[client]} decoded pixels and "
                           f"this request's images decode to {pixels}, past GAZER_MAX_EXPLAINED_PIXELS_PER_CLIENT "
                           f"({self.per_client}); wait for an answer first", RETRY_AFTER_SECONDS)
        self.held += pixels
        self.of_client[client] += share
        try:
            yield
        finally:
            self.held -= pixels
            self.of_client[client] -= share
            if not self.of_client[client]:
                del self.of_client[client]


class RefuseBeforeBodies:
    """Answers before the upload is read and parsed what the route would refuse from what is known
    now: POST /v1/models/{model}/predict or /explain while that model's queue is full (503), or
    the caller's share of it or of the explanation slots (429); POST /v1/datasets while the
    caller has its share of uploads in progress (429) or its key its quota of data sets (403).
    Otherwise a client at its limits could make the service take in any number of uploads (a data
    set's: 500 MB) to refuse each. The routes check again, as they count. Placed inside
    KeysBeforeBodies: whether a model is busy is told only to callers with a key, where keys are
    required."""

    def __init__(self, app: ASGIApp, keys: KeyStore | None, queues: ModelQueues, explanations: ExplanationSlots,
                 ingests: ClientShares, storage: Storage, settings: Settings) -> None:
        self.app = app
        self.keys = keys
        self.queues = queues
        self.explanations = explanations
        self.ingests = ingests
        self.storage = storage
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            try:
                await self._check(scope["path"].strip("/").split("/"), scope)
            except GazerError as refused:
                await gazer_error_response(refused)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _check(self, parts: list[str], scope: Scope) -> None:
        predicts = len(parts) == 4 and parts[:2] == ["v1", "models"] and parts[3] in ("predict", "explain")
        if not predicts and parts != ["v1", "datasets"]:
            return
        caller, client = scope_caller(self.keys, scope)
        if predicts:
            refused = self.queues.refusal(parts[2], client) or \
                (self.explanations.refusal(client) if parts[3] == "explain" else None)
        else:
            refused = self.ingests.refusal(client)
            if refused is None:  # reads the data sets' descriptions
                await anyio.to_thread.run_sync(check_dataset_quota, caller, self.storage, self.settings)
        if refused is not None:
            raise refused


class RefuseOverCapacity:
    """A request the HTTP protocol marked OVER_CAPACITY (GAZER_MAX_CONNECTIONS connections or
    requests in flight in this process): 503 with Retry-After at once. Placed inside
    RequestContext, so that it carries the request id and is counted."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get(OVER_CAPACITY):
            # closed after the answer, as uvicorn's was: a kept connection would keep its place over the cap
            busy = ServiceBusy("this API process has GAZER_MAX_CONNECTIONS connections or requests in flight; "
                               "retry shortly",
                               headers={"Retry-After": str(RETRY_AFTER_SECONDS), "Connection": "close"})
            await gazer_error_response(busy)(scope, receive, send)
            return
        await self.app(scope, receive, send)
