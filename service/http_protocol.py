"""uvicorn's httptools protocol with three deadlines and two caps uvicorn lacks. A connection whose
next request has not finished its headers within the header deadline is closed (slowloris: a byte
of headers every few seconds would hold it for ever). A request answered before its body was
complete (401, 403, 408, 413, an early 503) gets the linger deadline to send the rest, which uvicorn
reads and throws away, with no timeout of its own: then its connection is closed. An answer its
client stops reading (the transport's buffer past its high-water mark) gets the same deadline,
renewed while any of it goes out, then its connection is reset: uvicorn hands the transport a
whole answer and waits for it to drain for ever, so a client that read nothing held each answer
(13 MB for 64 explanations) in the process's memory for as long as it stayed connected. One address (an
IPv6 one's /64) holds at most `per_address` connections of a process at once: uvicorn's limit
counts every open connection, so one address holding them all, idle, had every other client
answered 503. And what is not body (a request's line and headers, a chunk's size line, a chunked
body's trailers) is at most MAX_HEAD_BYTES at a stretch: httptools joins the pieces of a header
as they arrive, at a cost that grows with the square of its length, on the event loop, and nothing
bounded them (a 30 MB header got its 200; 170 MB of trailers held the loop for 30 s). Beyond
`max_in_flight` connections or requests in flight (uvicorn's limit_concurrency, counted as it
counts them), a request is marked OVER_CAPACITY for the app to answer 503, as its other 503s
(uvicorn's own answer was plain text, without Retry-After or the request id, and no metric
counted it). A request with a transfer coding other than chunked gets 501 and its connection
closed: httptools read `gzip, chunked` as chunked and handed the app the coded bytes as the body.
A client's end of stream is taken for a client gone, as uvicorn takes it, even after a
whole request: a half-close (`nc -N`) cannot be told from a client that closed and left, and
dropping the work of one that left is what keeps a model free for the others."""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
import termios
import time
from collections import Counter

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from schemas.problems import problem
from service.addresses import address_group
from service.browser_policy import browser_headers

# A connection refused or closed for being slow is logged once per address and reason in this
# many seconds, with the count since: a line per connection would let one address write the log
# as fast as it can connect.
CLOSES_LOGGED_EVERY_SECONDS = 10.0
_COUNTED_ADDRESSES = 4096  # (address, reason) pairs whose closes are counted; beyond, all forgotten
MAX_HEAD_BYTES = 64 * 1024
# Set in an unfinished request's ASGI scope when the server begins to stop: uvicorn waits for
# every response to complete, and a job's event stream would complete only with its job.
SERVER_STOPPING = "gazer.server_stopping"
OVER_CAPACITY = "gazer.over_capacity"


def _closing_answer(status: int, reason: str, code: str, detail: str) -> bytes:
    """A problem answered by the protocol itself, before or instead of the app, on a connection it
    then closes."""
    body = problem(status, code, detail).model_dump_json(exclude_none=True).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/problem+json\r\n".encode()
            + b"".join(f"{name}: {value}\r\n".encode() for name, value in browser_headers("/").items())
            + b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))


def guarded_protocol(header_seconds: float, linger_seconds: float, per_address: int,
                     max_in_flight: int | None = None) -> type[HttpToolsProtocol]:
    open_from: Counter[str] = Counter()  # this process's connections by peer address
    closed: dict[tuple[str | None, str], tuple[float, int]] = {}  # (address, reason) -> (last logged, closed since)

    class DeadlineProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None
        _unread: asyncio.TimerHandle | None = None  # while writing is paused: the answer's deadline
        _unsent = 0  # bytes still to send when that deadline was set
        _counted: str | None = None
        # What is not body, at a stretch: bytes since the parser last passed a landmark (a
        # message's start, its headers' end, a chunk's size line, a chunk's end), where those of
        # a read that passed one are not counted (so a stretch may take one read more); and a
        # request's line and headers, measured exactly once they are complete.
        _not_body = 0
        _passed_landmark = False
        _body_in_read = 0
        _in_headers = False
        _refused = False  # closing: what the parser still calls back with is ignored

        def _arm(self, seconds: float, why: str) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(seconds, self._too_slow, why)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self, why: str) -> None:
            self._deadline = None
            self._log_close(self._counted, why, f"closing a connection from {self._who()}, whose {why}")
            self.transport.close()

        def _who(self) -> str:
            peer = self.transport.get_extra_info("peername")
            return peer[0] if isinstance(peer, tuple) and peer else "an unknown peer"

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._unread is None:
                self._watch_unread()

        def resume_writing(self) -> None:
            super().resume_writing()
            self._unwatch_unread()

        def _watch_unread(self) -> None:
            self._unsent = self._still_to_send()
            self._unread = self.loop.call_later(linger_seconds, self._check_unread)

        def _still_to_send(self) -> int:
            """The transport's buffer and the socket's send queue: the transport writes more only
            once the kernel has sent half its queue (seconds at a slow client's pace), while each
            byte the client reads leaves the queue."""
            try:
                connection = self.transport.get_extra_info("socket")
                queued = struct.unpack("i", fcntl.ioctl(connection.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
            except (AttributeError, OSError):  # closed meanwhile, or not Linux's socket
                queued = 0
            return self.transport.get_write_buffer_size() + queued

        def _unwatch_unread(self) -> None:
            if self._unread is not None:
                self._unread.cancel()
                self._unread = None

        def _check_unread(self) -> None:
            """Called while writing stays paused (or a closed connection's answer is still
            going out): watched again where some went out, else aborted."""
            if self._still_to_send() < self._unsent:
                self._watch_unread()
                return
            self._unread = None
            why = f"client read none of its answer for {linger_seconds:g} s"
            self._log_close(self._counted, why, f"closing a connection from {self._who()}, whose {why}")
            try:  # a reset, which drops the socket's queue too (closed, the kernel sends it, then ends
                # the answer short as if whole, to a client that does not count its bytes)
                self.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                                   struct.pack("ii", 1, 0))
            except (AttributeError, OSError):
                pass
            self.transport.abort()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            peer = transport.get_extra_info("peername")
            address = address_group(peer[0]) if isinstance(peer, tuple) and peer else None
            if address is not None and open_from[address] >= per_address:
                self._log_close(address, "refused", f"closing a connection from {peer[0]}, whose client ({address}) "
                                                    f"holds {per_address} already")
                transport.close()
                return
            if address is not None:
                open_from[address] += 1
                self._counted = address
            self._arm(header_seconds, f"request headers took over {header_seconds:g} s")

        def _log_close(self, address: str | None, reason: str, line: str) -> None:
            now = time.monotonic()
            logged_at, since = closed.get((address, reason), (float("-inf"), 0))
            if now - logged_at < CLOSES_LOGGED_EVERY_SECONDS:
                closed[address, reason] = (logged_at, since + 1)
                return
            if len(closed) >= _COUNTED_ADDRESSES and (address, reason) not in closed:
                closed.clear()
            closed[address, reason] = (now, 0)
            self.logger.info("%s%s", line, f" ({since} more since this line was last logged)" if since else "")

        def data_received(self, data: bytes) -> None:
            self._passed_landmark, self._body_in_read = False, 0
            super().data_received(data)
            self._not_body = 0 if self._passed_landmark else self._not_body + len(data) - self._body_in_read
            if self._not_body > MAX_HEAD_BYTES and not self._refused:
                self._too_long()

        def _too_long(self) -> None:
            self._refused = True
            self._disarm()
            who = self._who()
            what = "request headers" if self._in_headers else "chunk size line or trailers"
            self._log_close(self._counted, what, f"closing a connection from {who}, whose {what} ran over "
                                                   f"{MAX_HEAD_BYTES} bytes")
            if self._in_headers and (self.cycle is None or self.cycle.response_complete):  # none in flight: say why
                self.transport.write(_closing_answer(431, "Request Header Fields Too Large", "headers-too-large",
                                                     f"a request's line and headers may take at most "
                                                     f"{MAX_HEAD_BYTES} bytes"))
            self.transport.close()

        def _unknown_coding(self) -> bytes | None:
            """A transfer coding other than chunked, which httptools passes (`gzip, chunked`)
            and would hand the app as the body's bytes, still coded."""
            for name, value in self.headers:
                if name == b"transfer-encoding":
                    for coding in value.split(b","):
                        if coding.strip().lower() not in (b"chunked", b""):
                            return coding.strip()
            return None

        def _landmark(self) -> None:
            self._passed_landmark, self._not_body = True, 0

        def on_message_begin(self) -> None:
            if self._refused:
                return
            self._landmark()
            self._in_headers = True
            super().on_message_begin()
            self._unset_keepalive_if_required()  # armed when an early-answered body ended in the same read
            self._arm(header_seconds, f"request headers took over {header_seconds:g} s")

        def on_headers_complete(self) -> None:
            if self._refused:
                return
            self._landmark()
            self._disarm()
            # the request line (method, version and spaces in at most 20 bytes) and each header line
            if len(self.url) + 20 + sum(len(name) + len(value) + 4 for name, value in self.headers) > MAX_HEAD_BYTES:
                self._too_long()
                return
            self._in_headers = False
            coding = self._unknown_coding()
            if coding is not None:  # RFC 9112 6.1: 501
                self._refused = True
                if self.cycle is None or self.cycle.response_complete:  # none in flight: say why
                    self.transport.write(_closing_answer(
                        501, "Not Implemented", "transfer-coding-not-implemented",
                        f"the transfer coding {coding[:40].decode(errors='replace')!r} is not implemented: "
                        f"send the body as it is, with a Content-Length, or chunked"))
                self.transport.close()
                return
            if max_in_flight is not None and (len(self.connections) >= max_in_flight
                                              or len(self.tasks) >= max_in_flight):
                self.scope[OVER_CAPACITY] = True  # type: ignore[literal-required]
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            self._body_in_read += len(body)
            if not self._refused:
                super().on_body(body)

        def on_chunk_header(self) -> None:  # httptools calls what its protocol has
            self._landmark()

        def on_chunk_complete(self) -> None:
            self._landmark()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.cycle.response_complete and self.cycle.more_body and not self.transport.is_closing():
                self._arm(linger_seconds, f"request body, answered before it was complete, was not complete "
                                          f"{linger_seconds:g} s later")

        def on_message_complete(self) -> None:
            if self._refused:
                return
            self._landmark()
            if self._deadline is not None and self.cycle.response_complete:  # the body answered early, now complete
                self._disarm()
                self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                    self.timeout_keep_alive_handler)
            super().on_message_complete()

        def shutdown(self) -> None:
            if self.cycle is not None and not self.cycle.response_complete:
                self.cycle.scope[SERVER_STOPPING] = True  # type: ignore[literal-required]
            super().shutdown()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self._unwatch_unread()
            if self._counted is not None:
                open_from[self._counted] -= 1
                if not open_from[self._counted]:
                    del open_from[self._counted]
                self._counted = None
            super().connection_lost(exc)

    return DeadlineProtocol


def __getattr__(name: str) -> type[HttpToolsProtocol]:
    """`service.http_protocol:FROM_SETTINGS`, the protocol with GAZER_HEADER_SECONDS' deadline,
    GAZER_BODY_IDLE_SECONDS' to linger, GAZER_MAX_CONNECTIONS_PER_ADDRESS and
    GAZER_MAX_CONNECTIONS, built when it is
    imported by name: what uvicorn's worker processes receive (a class made in a function cannot
    be sent to them)."""
    if name == "FROM_SETTINGS":
        from service.settings import Settings

        settings = Settings()
        return guarded_protocol(settings.header_seconds, settings.body_idle_seconds,
                                settings.max_connections_per_address, settings.max_connections)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
