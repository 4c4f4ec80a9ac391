"""The JSON log lines."""

from __future__ import annotations

import json
import logging

from infra.logs import JsonFormatter, QuietProbes


def access_record(path: str, status: int = 401, method: str = "GET") -> logging.LogRecord:
    return logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                             ("127.0.0.1:5000", method, path, "1.1", status), None)


def access_line(path: str) -> dict:
    return json.loads(JsonFormatter().format(access_record(path)))


def test_a_key_in_a_query_string_is_not_logged():
    line = access_line("/v1/models?api_key=gz_12345678_secret&state=running&X-Token=abc")
    assert "gz_12345678_secret" not in json.dumps(line) and "abc" not in line["path"]
    assert line["path"] == "/v1/models?api_key=[redacted]&state=running&X-Token=[redacted]"
    assert line["status"] == 401 and line["message"].endswith('"GET ' + line["path"] + ' HTTP/1.1" 401')


def test_a_path_without_a_query_is_logged_as_it_came():
    assert access_line("/v1/models/efficientnet_lite0/predict")["path"] == "/v1/models/efficientnet_lite0/predict"


def test_successful_probes_and_scrapes_are_not_logged_and_failed_ones_are():
    quiet = QuietProbes()
    assert not quiet.filter(access_record("/readyz", 200)) and not quiet.filter(access_record("/metrics?x=1", 200))
    assert not quiet.filter(access_record("/healthz", 200)) and not quiet.filter(access_record("/healthz", 200, "HEAD"))
    assert quiet.filter(access_record("/readyz", 503)) and quiet.filter(access_record("/metrics", 401))
    assert quiet.filter(access_record("/v1/models", 200)) and quiet.filter(access_record("/readyz", 200, "POST"))
