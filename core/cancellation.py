"""Work done for a client that has gone away is dropped: the service sets an event when the
connection closes, and the explanation stops at its next model run."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

from core.errors import GazerError

_gone: ContextVar[threading.Event | None] = ContextVar("client_gone", default=None)


class ClientGone(GazerError):
    """Nobody is left to answer (nginx's 499)."""

    code = "client-gone"
    status = 499


@contextmanager
def for_client(gone: threading.Event) -> Iterator[None]:
    """Work in this block (this thread) stops at its next check once `gone` is set."""
    token = _gone.set(gone)
    try:
        yield
    finally:
        _gone.reset(token)


def current() -> threading.Event | None:
    """This block's event (see for_client), if any."""
    return _gone.get()


def check() -> None:
    """Raises ClientGone once this block's client has gone (see for_client)."""
    gone = _gone.get()
    if gone is not None and gone.is_set():
        raise ClientGone("the client closed the connection; its work was dropped")
