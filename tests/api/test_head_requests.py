"""HEAD is GET without its body, on every route that answers GET."""

from __future__ import annotations

import pytest


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
