"""GAZER_MAX_CONNECTIONS: beyond it a request is answered 503 as the API's other 503s are, with
Retry-After, its request id and a count in the metrics (uvicorn answered a plain-text 503 that no
metric saw)."""

from __future__ import annotations

import re
import socket

import httpx

from tests.live_service import LiveService

CAP = 3


def test_a_request_past_the_connection_cap_is_a_counted_503_problem_with_retry_after(tmp_path):
    with LiveService(tmp_path, max_connections=CAP) as service:
        idle = [socket.create_connection(("127.0.0.1", service.port)) for _ in range(CAP)]
        try:
            refused = httpx.get(f"{service.url}/readyz", headers={"X-Request-ID": "over-the-cap"}, timeout=10)
        finally:
            for connection in idle:
                connection.close()
        assert refused.status_code == 503 and refused.headers["content-type"] == "application/problem+json"
        assert refused.headers["retry-after"] == "1" and refused.headers["x-request-id"] == "over-the-cap"
        assert refused.headers["connection"] == "close"  # its place over the cap is given back
        assert "GAZER_MAX_CONNECTIONS" in refused.json()["detail"], refused.text
        metrics = httpx.get(f"{service.url}/metrics", timeout=10).text
        counted = re.findall(r'^gazer_http_503_responses_total\{route="[^"]*"\} ([0-9.]+)$', metrics, re.MULTILINE)
        assert sum(float(count) for count in counted) >= 1, metrics
        assert httpx.get(f"{service.url}/readyz", timeout=10).status_code == 200  # the connections gone, served
