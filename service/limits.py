"""Refuse request bodies over the configured size before anything reads them, or that arrive
too slowly (a slow-body attack holds a connection and a worker thread for nothing)."""

from __future__ import annotations

import time

import anyio
from python_multipart.multipart import parse_options_header
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from core.errors import PayloadTooLarge, StorageFull
from core.storage import Storage
from service.errors import gazer_error_response, problem_response

UPLOAD_PATHS = ("/v1/models", "/v1/datasets")
# Any JSON body (a job, a pin), and one with no type, which FastAPI reads as JSON: a sweep's largest
# space is a few KB; parsing 48 MB of JSON held the event loop for 2 s.
JSON_BODY_BYTES = 1024**2


def is_json(scope: Scope) -> bool:
    """Whether FastAPI would parse the body as JSON: typed so, or not typed at all."""
    declared = dict(scope["headers"]).get(b"content-type")
    if declared is None:
        return True
    media_type = parse_options_header(declared)[0].lower()
    return media_type == b"application/json" or media_type.endswith(b"+json")


class RequestSizeLimit:
    """Answers 413 when Content-Length is over the limit, and stops reading a body sent
    without a length (chunked) with a 413 as soon as it passes the limit. `per_path`: other
    limits for some paths (matched exactly); a JSON body's is at most JSON_BODY_BYTES. A body
    that sends nothing for `idle_seconds` before it is complete gets 408, and so does one that
    falls behind an average of `min_bytes_per_second` once its first `idle_seconds` are past: a
    byte now and then would otherwise hold the connection for as long as its client likes.
    Bytes sent ahead of that pace earn at most `2 * idle_seconds` of waiting: 250 MB sent at
    once, then a byte every 20 s, held its parts in memory for hours. Both count only the time
    spent waiting for the client, not the server's own between two reads of the body."""

    def __init__(self, app: ASGIApp, max_bytes: int, per_path: dict[str, int] | None = None,
                 idle_seconds: float = 30.0, min_bytes_per_second: float = 16384) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.per_path = per_path or {}
        self.idle_seconds = idle_seconds
        self.min_bytes_per_second = min_bytes_per_second

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope["path"].rstrip("/"), self.max_bytes)
        if is_json(scope):
            limit = min(limit, JSON_BODY_BYTES)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and (len(declared) > 18 or int(declared) > limit):
            size = declared.decode() if len(declared) <= 18 else "over 10**18"  # int() refuses 4300+ digits
            response = problem_response(PayloadTooLarge.status, PayloadTooLarge.code,
                                        f"the request body is {size} bytes; the limit is {limit}")
            await response(scope, receive, send)
            return
        received = 0
        complete = False
        waited = 0.0  # seconds spent waiting for the client's next part
        most_ahead = 2 * self.idle_seconds
        ahead = self.idle_seconds  # seconds the client may still wait: what it sent earns more

        async def limited_receive() -> dict:
            nonlocal received, complete, waited, ahead
            if complete:  # what comes after the body is the disconnect, whenever it comes
                return await receive()
            if ahead <= 0:
                raise HTTPException(408, self._too_slow(received, waited))
            asked = time.monotonic()
            with anyio.move_on_after(min(self.idle_seconds, ahead)) as wait:
                message = await receive()
            this_wait = time.monotonic() - asked
            waited += this_wait
            if wait.cancelled_caught:
                raise HTTPException(408, f"the request body sent nothing for {self.idle_seconds:g} s"
                                    if self.idle_seconds <= ahead else self._too_slow(received, waited))
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            body = len(message.get("body", b""))
            received += body
            ahead = min(most_ahead, ahead - this_wait + body / self.min_bytes_per_second)
            if received > limit:
                raise HTTPException(PayloadTooLarge.status, f"the request body is over the limit of {limit} bytes")
            return message

        await self.app(scope, limited_receive, send)

    def _too_slow(self, received: int, waited: float) -> str:
        return (f"the request body sent {received} bytes in {waited:.1f} s; it must average "
                f"{self.min_bytes_per_second:g} bytes/s after its first {self.idle_seconds:g} s, and bytes "
                f"sent ahead of that earn at most {2 * self.idle_seconds:g} s of waiting")


class RefuseUnfinishedMultipart:
    """A multipart body that ends before its closing delimiter (`--BOUNDARY--` at the start of a
    line) is a 400 that says so. python-multipart reports no such truncation, and the parts it never
    finished would be missing: a cut-off upload was a 422 "file: Field required". Within a line,
    the same bytes are a part's data (a file may hold them), not its end."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        media_type, params = parse_options_header(dict(scope["headers"]).get(b"content-type", b""))
        boundary = params.get(b"boundary")
        if media_type != b"multipart/form-data" or not boundary:
            await self.app(scope, receive, send)
            return
        closing = b"\r\n--" + boundary + b"--"
        overlap = len(closing) - 1
        # tail: the body's last bytes, where a delimiter split between two chunks begins; first a
        # line break, as if before the body, which may close at once (no parts)
        seen, tail = False, b"\r\n"

        async def checked_receive() -> dict:
            nonlocal seen, tail
            message = await receive()
            if seen or message["type"] != "http.request":
                return message
            chunk = message.get("body", b"")
            seen = closing in chunk or closing in tail + chunk[:overlap]
            tail = chunk[-overlap:] if len(chunk) >= overlap else (tail + chunk)[-overlap:]
            if not seen and not message.get("more_body", False):
                raise HTTPException(400, "the multipart body ends before its closing boundary: the upload was cut off")
            return message

        await self.app(scope, checked_receive, send)


class RoomBeforeUploads:
    """An upload (a model, a data set) that would leave the data folder with less free space than
    its floor is a 507 (Storage.check_room): counting its declared length before its body is
    read, and again as its body arrives, every CHECK_EVERY_BYTES, counting the part at hand (the
    parts before it are spooled to disk by then, where the temporary folder shares the data
    folder's disk), so that a body without a length, or several at once, stop near the floor."""

    CHECK_EVERY_BYTES = 4 * 2**20

    def __init__(self, app: ASGIApp, storage: Storage) -> None:
        self.app = app
        self.storage = storage

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"].rstrip("/") not in UPLOAD_PATHS:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        try:
            self.storage.check_room(int(declared) if declared.isdigit() and len(declared) <= 18 else 0)
        except StorageFull as full:
            await gazer_error_response(full)(scope, receive, send)
            return
        received = checked_at = 0

        async def checked_receive() -> dict:
            nonlocal received, checked_at
            message = await receive()
            part = len(message.get("body", b""))
            received += part
            if received - checked_at >= self.CHECK_EVERY_BYTES:
                checked_at = received
                try:
                    self.storage.check_room(part)
                except StorageFull as full:  # as an HTTPException: FastAPI makes others raised here a 400
                    raise HTTPException(StorageFull.status, full.detail) from None
            return message

        await self.app(scope, checked_receive, send)
