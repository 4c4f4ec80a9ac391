"""The header and trailer caps of service.http_protocol, fed reads exactly as given (a live
socket's reads depend on timing): uvicorn's own httptools protocol, ours around it, a transport
that records what is written."""

from __future__ import annotations

import asyncio

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from service.http_protocol import MAX_HEAD_BYTES, guarded_protocol


async def echo_length(scope, receive, send) -> None:
    """Answers 200 with the length of the body it read."""
    length, more = 0, True
    while more:
        message = await receive()
        length += len(message.get("body", b""))
        more = message.get("more_body", False)
    answer = str(length).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(answer))]})
    await send({"type": "http.response.body", "body": answer})


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written, self.closed = b"", False

    def get_extra_info(self, name, default=None):
        return {"peername": ("203.0.113.9", 5555), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, *args, **kwargs) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def served(reads: list[bytes]) -> tuple[list[bytes], bool]:
    """The status lines answered to `reads`, and whether the connection was closed."""
    async def serve() -> tuple[list[bytes], bool]:
        config = Config(app=echo_length, http="httptools", lifespan="off", log_level="warning")
        config.load()
        protocol = guarded_protocol(60, 60, 100)(config=config, server_state=ServerState(), app_state={},
                                                 _loop=asyncio.get_running_loop())
        transport = RecordingTransport()
        protocol.connection_made(transport)
        for data in reads:
            protocol.data_received(data)
            await asyncio.sleep(0.01)
            if transport.closed:
                break
        await asyncio.sleep(0.05)
        closed = transport.closed
        protocol.connection_lost(None)
        return [line for line in transport.written.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")], closed

    return asyncio.run(serve())


BODY = b"a" * (3 * MAX_HEAD_BYTES)
POST = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(BODY)
GET = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"


@pytest.mark.parametrize("reads", [
    [POST[:-2], POST[-2:] + BODY],  # the headers' end split across reads, the body after it
    [POST[:-1], POST[-1:] + BODY],
    [GET + POST[:-2], POST[-2:] + BODY],  # pipelined: the next request's headers end in the next read
    [POST + BODY[:1000], BODY[1000:] + GET[:-2], GET[-2:]],  # a body's end, then the next request
])
def test_bodies_are_never_taken_for_headers(reads):
    answers, closed = served(reads)
    assert b"HTTP/1.1 200 OK" in answers and b"431" not in b"".join(answers) and not closed, answers


def test_chunked_bodies_of_any_chunk_size_pass():
    chunks = b"".join(b"%x\r\n%s\r\n" % (size, b"a" * size) for size in [1] * 20000 + [8192] * 30) + b"0\r\n\r\n"
    head = b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    answers, closed = served([head + chunks[:4096]] + [chunks[start:start + 65536]
                                                       for start in range(4096, len(chunks), 65536)])
    assert answers == [b"HTTP/1.1 200 OK"] and not closed


@pytest.mark.parametrize("reads", [
    [b"GET /x HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES + 1) + b"\r\n\r\n"],  # in one read
    [b"GET /x HTTP/1.1\r\nHost: h\r\nX-Big: "] + [b"a" * 8192] * 100,  # still coming
    [b"GET /x HTTP/1.1\r\nHost: h\r\n" + b"X-Small: a\r\n" * 8000 + b"\r\n"],  # many small ones
])
def test_headers_past_the_cap_get_431_and_the_connection_closed(reads):
    answers, closed = served(reads)
    assert answers == [b"HTTP/1.1 431 Request Header Fields Too Large"] and closed


def test_trailers_past_the_cap_close_the_connection_without_an_answer():
    head = b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nX-Trailer: "
    answers, closed = served([head] + [b"a" * 8192] * 100)
    assert answers == [] and closed


@pytest.mark.parametrize("codings", [b"gzip, chunked", b"gzip", b"x-custom,chunked"])
def test_a_transfer_coding_other_than_chunked_gets_501_and_the_connection_closed(codings):
    """httptools passed `gzip, chunked` on as chunked: the app got the gzip stream for the body."""
    answers, closed = served([b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: %s\r\n\r\n"
                              b"5\r\nhello\r\n0\r\n\r\n" % codings])
    assert answers == [b"HTTP/1.1 501 Not Implemented"] and closed


def test_chunked_in_any_case_is_served():
    answers, closed = served([b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n"
                              b"5\r\nhello\r\n0\r\n\r\n"])
    assert answers == [b"HTTP/1.1 200 OK"] and not closed
