"""Schemathesis over every operation of /openapi.json, against the real app (lifespan run: the
real EfficientNet-Lite0 and the embedded Redis; no worker, so submitted jobs just stay queued).

Checked for every generated request: no 5xx, a documented status code, a documented content
type, a body that matches the documented schema, documented headers. Seeded and bounded, so a
CI run is reproducible and takes a minute or two on two cores.
"""

from __future__ import annotations

import tempfile

import pytest
import schemathesis
from schemathesis import checks
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from service.app import create_app
from service.settings import Settings

BASE_URL = "http://localhost"  # the service refuses Host names outside loopback


def fuzz_settings(data_dir) -> Settings:
    # Rate and compute buckets far above what fuzzing sends, so a 429 never hides a response
    # worth checking; event streams short, in case one ever follows a real job.
    return Settings(data_dir=data_dir, requests_per_second=1e6, request_burst=10**9,
                    compute_per_second=1e9, compute_burst=10**9, event_stream_seconds=1.0,
                    max_datasets_per_key=10**6, max_models_per_key=10**6, max_active_jobs_per_client=10**6)


# The schema exactly as the service serves it at /openapi.json (it does not depend on the data
# directory, and serving it needs no lifespan).
with tempfile.TemporaryDirectory() as _schema_dir, \
        TestClient(create_app(fuzz_settings(_schema_dir)), base_url=BASE_URL) as _schema_client:
    _served = _schema_client.get("/openapi.json")
    assert _served.status_code == 200, _served.text
    SCHEMA = schemathesis.openapi.from_dict(_served.json())


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory):
    app = create_app(fuzz_settings(tmp_path_factory.mktemp("gazer-fuzz")))
    with TestClient(app, base_url=BASE_URL, raise_server_exceptions=False) as client:
        yield client


def test_every_operation_is_fuzzed():
    operations = {(op.method.upper(), op.path) for op in (result.ok() for result in SCHEMA.get_all_operations())}
    assert len(operations) >= 20, operations


def as_bytes(value) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


@SCHEMA.parametrize()
@settings(max_examples=20, deadline=None, derandomize=True, database=None, print_blob=True,
          suppress_health_check=list(HealthCheck))
def test_api_conforms(case, fuzz_client):
    kwargs = case.as_transport_kwargs(base_url=BASE_URL)
    if kwargs.get("files"):  # requests-style parts; httpx takes only str or bytes contents
        kwargs["files"] = [(field, (part[0], as_bytes(part[1]), *part[2:]) if isinstance(part, tuple) else as_bytes(part))
                           for field, part in kwargs["files"]]
    response = fuzz_client.request(**kwargs)
    response.request.read()  # multipart bodies stream: schemathesis reads the sent body back
    # Every other built-in check runs: no 5xx, documented status codes, content types, bodies,
    # headers, `Allow` on 405s. Left out, as they judge how precisely the schema describes
    # *requests*, not whether responses match it: the service refuses schema-valid values it
    # checks itself (model and class names, a data set that does not exist, an archive that is
    # not one: all 4xx problems) and pydantic's lax mode accepts some schema-invalid ones
    # (`false` for an int).
    case.validate_response(response, excluded_checks=[checks.positive_data_acceptance,
                                                      checks.negative_data_rejection])
