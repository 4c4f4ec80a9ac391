"""Noticing that a client has gone: the request's ASGI channel says `http.disconnect`, and an
event that the work in a thread can check is set."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import Request


async def _wait_for_disconnect(request: Request, gone: threading.Event) -> None:
    while True:
        message = await request.receive()  # the body is read already: what comes next is the end
        if message["type"] == "http.disconnect":
            gone.set()
            return


@asynccontextmanager
async def client_watch(request: Request) -> AsyncIterator[threading.Event]:
    """An event set when the client disconnects, watched while the block runs. A plain task,
    not a task group: the block's own errors must leave as they are, not in an ExceptionGroup."""
    gone = threading.Event()
    watcher = asyncio.ensure_future(_wait_for_disconnect(request, gone))
    try:
        yield gone
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
