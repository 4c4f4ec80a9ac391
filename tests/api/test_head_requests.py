"""HEAD is GET without its body, on every route that answers GET."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import MODEL


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/v1/models", "/v1/models/efficientnet_lite0", "/metrics",
                                  "/", "/openapi.json"])
def test_head_answers_as_get_without_the_body(client, path):
    """Uptime monitors send HEAD by default; it was a 405 everywhere but an artifact's route."""
    got, head = client.get(path), client.head(path)
    assert got.status_code == head.status_code == 200 and got.content and head.content == b"", head.text
    assert head.headers["content-type"] == got.headers["content-type"]
    if path != "/metrics":  # its counts move between the two requests
        assert head.headers["content-length"] == got.headers["content-length"]


def test_head_of_an_unknown_model_is_its_404_without_the_body(client):
    head = client.head("/v1/models/no-such-model")
    assert head.status_code == 404 and head.content == b""
    assert head.headers["content-type"] == "application/problem+json"


def test_head_where_only_post_is_answered_is_405(client):
    head = client.head("/v1/models/efficientnet_lite0/predict")
    assert head.status_code == 405 and head.content == b"" and head.headers["allow"] == "POST"


def test_head_of_an_event_stream_ends_with_its_headers_and_frees_its_slot(tmp_path):
    """The stream ran on behind an answer that had ended, for as long as the job (or an hour):
    the connection's next request waited behind it, and it held the client's one stream. A data
    folder of its own, so its Redis too: the job it queues stays queued, which the session's
    Redis would count for the other tests."""
    settings = Settings(data_dir=tmp_path, max_event_streams_per_client=1)
    with TestClient(base_url="http://localhost", app=create_app(settings)) as client:
        job = client.post("/v1/jobs/activation-maximization",
                          json={"model": MODEL, "target": {"class": 1}, "steps": 10, "size": 64}).json()
        started = time.perf_counter()
        head = client.head(f"/v1/jobs/{job['id']}/events")
        assert head.status_code == 200 and head.content == b"" and time.perf_counter() - started < 5
        assert head.headers["content-type"].startswith("text/event-stream")
        with client.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:  # its slot is free again
            assert stream.status_code == 200 and next(stream.iter_lines()) == "event: progress"


def test_head_requests_are_counted_under_their_route(client):
    """They were all `unmatched`: the router named the route in a copy of the request."""
    client.head("/v1/models")
    scraped = client.get("/metrics").text
    assert 'method="HEAD",route="/v1/models",status="200"' in scraped, scraped
