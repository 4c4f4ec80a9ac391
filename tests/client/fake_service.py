"""A real HTTP server that answers as a broken or malicious Gazer service would: each test says
what each path answers. It speaks HTTP/1.0, so an answer without a Content-Length ends when the
connection closes, as a streamed one may."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: bytes | Callable[[], Iterable[bytes]] = b""  # bytes, or what makes its chunks (sent as they come)
    headers: dict[str, str] = field(default_factory=dict)


def json_answer(value: Any, status: int = 200, **headers: str) -> Answer:
    return Answer(status, json.dumps(value).encode(), {"Content-Type": "application/json", **headers})


def problem(http_status: int, **fields: Any) -> Answer:
    return Answer(http_status, json.dumps(fields).encode(), {"Content-Type": "application/problem+json"})


def events(*blocks: str) -> Answer:
    """A job's event stream: each block one event's lines, each block ended by a blank line."""
    return Answer(200, "".join(f"{block}\n\n" for block in blocks).encode(), {"Content-Type": "text/event-stream"})


def job(job_id: str = "j1", state: str = "succeeded", **fields: Any) -> dict[str, Any]:
    """A job record as the service writes it."""
    return {"id": job_id, "type": "explain-dataset", "state": state, "progress": {"fraction": 1.0}, "result": {},
            "error": None, "params": {}, "attempts": 1, "cancel_requested": False, "created_at": 1.0,
            "started_at": 2.0, "finished_at": 3.0, **fields}


def model(model_id: str, **fields: Any) -> dict[str, Any]:
    """A model's summary (GET /v1/models), or with the detail's fields its description."""
    return {"id": model_id, "version": 1, "architecture": "resnet18", "input_size": 224, "num_classes": 2,
            "description": "", **fields}


class FakeService:
    """`with FakeService({"/v1/models": json_answer(...)}) as service:` serves on service.url; a
    path it was not given is a 404 problem. Paths are matched unquoted, without their query.
    `received` holds each request as (method, path, body), in the order they came."""

    def __init__(self, answers: dict[str, Answer]) -> None:
        self.answers = answers
        self.received: list[tuple[str, str, bytes]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        answers, received = self.answers, self.received

        class Handler(BaseHTTPRequestHandler):
            def answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = unquote(urlsplit(self.path).path)
                received.append((self.command, path, body))
                found = answers.get(path) or problem(404, title="Not Found", status=404, detail=f"no {path}")
                self.send_response(found.status)
                for name, value in found.headers.items():
                    self.send_header(name, value)
                if isinstance(found.body, bytes) and "Content-Length" not in found.headers:
                    self.send_header("Content-Length", str(len(found.body)))
                self.end_headers()
                try:
                    for chunk in [found.body] if isinstance(found.body, bytes) else found.body():
                        self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):  # the client has had enough
                    pass

            do_GET = do_POST = do_PUT = do_DELETE = answer

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> "FakeService":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def gazer_at(service: FakeService, *args: str, cwd: Any = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m gazer --url SERVICE ARGS` in `cwd`; stdout and stderr as text, undecodable bytes kept visible."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "gazer", "--url", service.url, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, errors="backslashreplace", timeout=timeout)
