"""uvicorn's httptools protocol with a deadline for request headers: uvicorn has none, so a
slowloris client (a byte of headers every few seconds) would hold its connection for ever.
A connection whose next request has not finished its headers within the deadline is closed."""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def with_header_deadline(seconds: float) -> type[HttpToolsProtocol]:
    class HeaderDeadlineProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(seconds, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _headers_too_slow(self) -> None:
            self._deadline = None
            self.logger.info("closing a connection whose request headers took over %g s", seconds)
            self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadlineProtocol


def __getattr__(name: str) -> type[HttpToolsProtocol]:
    """`service.http_protocol:FROM_SETTINGS`, the protocol with GAZER_HEADER_SECONDS' deadline, built
    when it is imported by name: what uvicorn's worker processes receive (a class made in a function
    cannot be sent to them)."""
    if name == "FROM_SETTINGS":
        from service.settings import Settings

        return with_header_deadline(Settings().header_seconds)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
