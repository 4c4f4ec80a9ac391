"""What every answer tells a browser: it may not be framed by another page (a page of another port
of the same host framed the web page and deleted a model with its stored key, at two clicks), nor
sniff a type, nor send a referrer; and a content security policy, looser for the documentation
pages (their inline scripts)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.conftest import MODEL


@pytest.mark.parametrize("path", ["/", "/static/app.js", f"/v1/models/{MODEL}", "/v1/models/no-such-model",
                                  "/openapi.json", "/healthz"])
def test_answers_forbid_framing_sniffing_and_referrers(client, path):
    answer = client.get(path)
    assert answer.status_code in (200, 404)
    assert answer.headers["x-frame-options"] == "DENY" and answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "no-referrer"
    policy = answer.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "default-src 'self'" in policy


def test_only_the_documentation_pages_may_run_inline_scripts(client):
    for path in ("/docs", "/redoc"):
        assert "script-src 'self' 'unsafe-inline'" in client.get(path).headers["content-security-policy"]
    assert "script-src" not in client.get("/").headers["content-security-policy"]  # default-src 'self' holds


def test_behind_a_root_path_the_documentation_keeps_its_policy(app_settings):
    """Under a root path (a proxy's prefix) the docs got the page's policy, which blocks their scripts."""
    with TestClient(create_app(app_settings()), base_url="http://localhost", root_path="/gazer") as client:
        docs = client.get("/gazer/docs")
        assert docs.status_code == 200 and "script-src 'self' 'unsafe-inline'" in docs.headers["content-security-policy"]


def test_a_500_of_an_unhandled_error_carries_them_too(app_settings):
    """Starlette answers an unhandled error outside every middleware."""
    app = create_app(app_settings())

    def broken() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/broken", broken)
    with TestClient(app, base_url="http://localhost", raise_server_exceptions=False) as client:
        answer = client.get("/broken")
        assert answer.status_code == 500 and answer.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
