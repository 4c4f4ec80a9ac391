"""The JSON log lines."""

from __future__ import annotations

import json
import logging

from infra.logs import JsonFormatter


def access_line(path: str) -> dict:
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", path, "1.1", 401), None)
    return json.loads(JsonFormatter().format(record))


def test_a_key_in_a_query_string_is_not_logged():
    line = access_line("/v1/models?api_key=gz_12345678_secret&state=running&X-Token=abc")
    assert "gz_12345678_secret" not in json.dumps(line) and "abc" not in line["path"]
    assert line["path"] == "/v1/models?api_key=[redacted]&state=running&X-Token=[redacted]"
    assert line["status"] == 401 and line["message"].endswith('"GET ' + line["path"] + ' HTTP/1.1" 401')


def test_a_path_without_a_query_is_logged_as_it_came():
    assert access_line("/v1/models/efficientnet_lite0/predict")["path"] == "/v1/models/efficientnet_lite0/predict"
