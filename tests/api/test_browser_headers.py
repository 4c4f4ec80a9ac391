"""What every answer tells a browser: it may not be framed by another page (a page of another port
of the same host framed the web page and deleted a model with its stored key, at two clicks), nor
sniff a type, nor send a referrer; and a content security policy, looser for the documentation
pages (their inline scripts)."""

from __future__ import annotations

import pytest

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
