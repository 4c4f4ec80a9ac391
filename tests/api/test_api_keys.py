"""API keys and scopes: who may call what, and who sees whose jobs and data sets. A real app
with a real key file and Redis; the keys are made the way `gazer keys create` makes them."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from unittest.mock import ANY

import anyio
import pytest
import torch
import torchvision
from fastapi.testclient import TestClient
from safetensors.torch import save

from core import datasets
from core.explain import METHODS
from core.models import versions
from schemas.api_keys import create_key, revoke_key
from service.start_checks import refusal
from service.app import create_app
from service.auth import KeysBeforeBodies, required_scope
from service.settings import Settings
from support import chelsea, encode, shapes_archive, upload
from tests.api.test_datasets import held_ingests
from tests.api.test_model_refusals import onnx_classifier
from tests.conftest import MODEL
from tests.held_method import GRADIENT_LAYER, HeldGradCAM


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    made = {name: create_key(path, scopes, label=name)[0]
            for name, scopes in (("predictor", ["predict"]), ("alice", ["jobs"]), ("bob", ["jobs"]),
                                 ("prometheus", ["metrics"]), ("admin", ["admin"]))}
    return path, made


@pytest.fixture(scope="module")
def api(keys, tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("keyed"), api_keys=keys[0])
    with TestClient(base_url="http://localhost", app=create_app(settings), raise_server_exceptions=False) as client:
        yield client


def as_(keys, name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {keys[1][name]}"}


def assert_problem(response, status: int, words: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert words in response.json()["detail"]
    return response.json()


def test_a_missing_or_unknown_key_is_401_with_a_challenge(api):
    missing = api.get(f"/v1/models/{MODEL}")
    assert_problem(missing, 401, "needs an API key")
    assert missing.headers["www-authenticate"] == "Bearer"
    assert_problem(api.get("/v1/jobs", headers={"X-API-Key": "gz_00000000_guess"}), 401, "not known")
    assert_problem(api.get("/v1/jobs", headers={"Authorization": "Bearer not-even-shaped"}), 401, "not known")


def test_health_and_the_page_need_no_key_and_metrics_need_the_metrics_scope(api, keys):
    for path in ("/healthz", "/readyz", "/"):
        assert api.get(path).status_code == 200, path
    assert api.get("/metrics").status_code == 401
    assert_problem(api.get("/metrics", headers=as_(keys, "predictor")), 403, "'metrics' scope")
    for who in ("prometheus", "admin"):
        scraped = api.get("/metrics", headers=as_(keys, who))
        assert scraped.status_code == 200 and "gazer_http_requests_total" in scraped.text, who
    assert_problem(api.get("/v1/jobs", headers=as_(keys, "prometheus")), 403, "'jobs' scope")


def test_each_scope_opens_its_routes_and_no_others(api, keys):
    photo = [upload(encode(chelsea()))]
    predicted = api.post(f"/v1/models/{MODEL}/predict", files=photo, headers={"X-API-Key": keys[1]["predictor"]})
    assert predicted.status_code == 200, predicted.text
    assert_problem(api.get("/v1/jobs", headers=as_(keys, "predictor")), 403, "'jobs' scope")
    assert_problem(api.post(f"/v1/models/{MODEL}/predict", files=photo, headers=as_(keys, "alice")), 403,
                   "'predict' scope")
    assert_problem(api.delete("/v1/models/pets@1", headers=as_(keys, "predictor")), 403, "'jobs' scope")
    assert_problem(api.delete("/v1/models/pets@1", headers=as_(keys, "alice")), 403, "only by the key that holds")
    assert_problem(api.put("/v1/models/pets/default", json={"version": 1}, headers=as_(keys, "predictor")), 403,
                   "'admin' scope")
    assert api.post(f"/v1/models/{MODEL}/predict", files=photo, headers=as_(keys, "admin")).status_code == 200


MIB = b"\0" * 2**20


def post_lazily(api: TestClient, path: str, headers: dict[str, str], mebibytes: int) -> tuple[int, int]:
    """POST a multipart upload of `mebibytes` MiB straight to the app over ASGI, handing over each
    piece only when the app asks for it, as a slow network would; the status, and how many of
    its mebibytes the app asked for before it answered."""
    pieces = [b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.bin"\r\n\r\n',
              *[MIB] * mebibytes, b"\r\n--b--\r\n"]
    given, status = 0, None

    async def receive() -> dict:
        nonlocal given
        if given == len(pieces):
            await anyio.sleep_forever()  # the client waits for its answer
        given += 1
        return {"type": "http.request", "body": pieces[given - 1], "more_body": given < len(pieces)}

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(name.lower().encode(), value.encode()) for name, value in
                         {**headers, "Host": "localhost", "Content-Type": "multipart/form-data; boundary=b"}.items()],
             "client": ("testclient", 50000), "server": ("localhost", 80), "state": {}}  # as TestClient's
    api.portal.call(api.app, scope, receive, send)
    return status, max(0, min(given - 1, mebibytes))


def test_a_request_without_a_key_or_its_scope_is_refused_before_its_body_is_read(api, keys):
    """Otherwise anyone could make the service take in (and spool to disk) 1 GiB per model upload."""
    for path, who, status in (("/v1/models", None, 401), ("/v1/datasets", None, 401),
                              (f"/v1/models/{MODEL}/predict", None, 401), ("/v1/models", "alice", 403),
                              ("/v1/models", "predictor", 403), ("/v1/datasets", "predictor", 403),
                              (f"/v1/models/{MODEL}/explain", "alice", 403)):
        headers = as_(keys, who) if who else {}
        assert post_lazily(api, path, headers, mebibytes=40) == (status, 0), (path, who)
    assert post_lazily(api, "/v1/models", as_(keys, "admin"), mebibytes=3) == (422, 3)  # read, then refused


def test_the_scopes_told_before_the_body_are_those_the_routes_require(keys, tmp_path):
    """Each /v1 operation in the schema, called with a key of each scope by an app without
    KeysBeforeBodies: the route refuses it for want of a scope exactly where `required_scope`,
    which that early check uses, says the key lacks it."""
    app = create_app(Settings(data_dir=tmp_path, api_keys=keys[0]))
    app.user_middleware = [layer for layer in app.user_middleware if layer.cls is not KeysBeforeBodies]
    checked = 0
    with TestClient(base_url="http://localhost", app=app, raise_server_exceptions=False) as routes_alone:
        for template, operations in app.openapi()["paths"].items():
            if not template.startswith("/v1/"):
                continue
            path = re.sub(r"\{[^}]+\}", "x", template)
            for method in operations:
                needed = required_scope(method.upper(), path)
                assert needed is not None, (method, template)
                for who, scopes in (("predictor", {"predict"}), ("alice", {"jobs"}), ("admin", {"admin"})):
                    answer = routes_alone.request(method, path, headers=as_(keys, who))
                    refused = answer.status_code == 403 and "scope" in answer.json()["detail"]
                    assert refused == (needed not in scopes and "admin" not in scopes), (method, template, who)
                    checked += 1
    assert checked >= 60, checked


def test_a_full_queue_is_told_only_to_requests_with_a_known_key(api, keys):
    queues = api.app.state.model_queues
    version = api.app.state.registry.get(MODEL).spec.ref
    queues.versions[MODEL] = (version, float("inf"))  # resolved by the route, trusted however slow the test
    queues.in_flight[version] = queues.limit  # as if that many were in flight
    try:
        assert_problem(api.post(f"/v1/models/{MODEL}/predict"), 401, "needs an API key")
        assert_problem(api.post(f"/v1/models/{MODEL}/predict", headers={"X-API-Key": "gz_00000000_guess"}), 401,
                       "not known")
        assert_problem(api.post(f"/v1/models/{MODEL}/predict", headers=as_(keys, "predictor")), 503, "in flight")
    finally:
        del queues.in_flight[version], queues.versions[MODEL]


@contextmanager
def explaining(api, keys, monkeypatch, who: str, photo) -> Iterator[None]:
    """A Grad-CAM of key `who` held in flight while the block runs; answered 200 after it."""
    held = HeldGradCAM()
    monkeypatch.setitem(METHODS, "gradcam", held)
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(api.post, f"/v1/models/{MODEL}/explain", files=[photo], headers=as_(keys, who),
                           data={"method": "gradcam", "layer": GRADIENT_LAYER, "outputs": "heatmap"})
        assert held.started.wait(60)
        try:
            yield
        finally:
            held.release.set()
        assert slow.result(60).status_code == 200


def test_one_key_holds_at_most_its_share_of_a_model_queue_and_of_the_explanation_slots(api, keys, monkeypatch):
    """Beyond its share a key is told 429 with Retry-After, while another key is still served."""
    queues, slots = api.app.state.model_queues, api.app.state.explanation_slots
    monkeypatch.setattr(queues, "per_client", 2)
    monkeypatch.setattr(slots, "per_client", 1)
    photo = upload(encode(chelsea()))
    explain = f"/v1/models/{MODEL}/explain"
    predict = f"/v1/models/{MODEL}/predict"
    with explaining(api, keys, monkeypatch, "predictor", photo):
        refused = assert_problem(api.post(explain, files=[photo], data={"method": "cam"},
                                          headers=as_(keys, "predictor")), 429, "GAZER_MAX_EXPLANATIONS_PER_CLIENT")
        assert refused["status"] == 429
        assert api.post(explain, files=[photo], data={"method": "cam"}, headers=as_(keys, "admin")).status_code == 200
        assert api.post(predict, files=[photo], headers=as_(keys, "predictor")).status_code == 200  # its 2nd place
        monkeypatch.setattr(queues, "per_client", 1)
        answer = api.post(predict, files=[photo], headers=as_(keys, "predictor"))
        assert_problem(answer, 429, "GAZER_MAX_QUEUED_PER_CLIENT")
        assert answer.headers["Retry-After"] == "1"
        assert api.post(predict, files=[photo], headers=as_(keys, "admin")).status_code == 200
    assert not queues.in_flight and not queues.of_client and not slots.of_client and slots.in_use == 0
    assert api.post(predict, files=[photo], headers=as_(keys, "predictor")).status_code == 200


def test_one_key_holds_at_most_its_share_of_the_explained_pixels(api, keys, monkeypatch):
    """chelsea is 135,300 pixels: a key holding one explanation of it has no room for a second
    under a share of 200,000 (429), while another key is served."""
    pixels = api.app.state.explained_pixels
    monkeypatch.setattr(pixels, "per_client", 200_000)
    photo = upload(encode(chelsea()))
    explain = f"/v1/models/{MODEL}/explain"
    with explaining(api, keys, monkeypatch, "predictor", photo):
        answer = api.post(explain, files=[photo], data={"method": "cam"}, headers=as_(keys, "predictor"))
        assert_problem(answer, 429, "GAZER_MAX_EXPLAINED_PIXELS_PER_CLIENT")
        assert answer.headers["Retry-After"] == "1"
        assert api.post(explain, files=[photo], data={"method": "cam"}, headers=as_(keys, "admin")).status_code == 200
    assert pixels.held == 0 and not pixels.of_client
    assert api.post(explain, files=[photo], data={"method": "cam"}, headers=as_(keys, "predictor")).status_code == 200


def test_readiness_names_uploaded_models_only_to_keys_and_load_failures_name_no_server_paths(api, keys):
    uploaded = api.post("/v1/models", data={"name": "secret-customer-model"}, headers=as_(keys, "admin"),
                        files={"onnx": ("m.onnx", onnx_classifier().SerializeToString())})
    assert uploaded.status_code == 201, uploaded.text
    anonymous = api.get("/readyz").json()
    assert list(anonymous["models"]) == [MODEL] and anonymous["models"][MODEL]["state"] == "ready"
    assert "secret-customer-model" in api.get("/readyz", headers=as_(keys, "predictor")).json()["models"]
    assert list(api.get("/readyz", headers=as_(keys, "alice")).json()["models"]) == [MODEL]

    data_dir = str(api.app.state.settings.data_dir.resolve())
    (Path(data_dir) / "models/secret-customer-model/1/model.onnx").unlink()  # as a load racing a DELETE finds it
    refused = api.post("/v1/models/secret-customer-model/predict", files=[upload(encode(chelsea()))],
                       headers=as_(keys, "admin"))
    assert_problem(refused, 503, "the server log has the cause")
    reason = api.get("/readyz", headers=as_(keys, "admin")).json()["models"]["secret-customer-model"]["reason"]
    assert data_dir not in refused.text and data_dir not in reason and "the server log has the cause" in reason


def test_data_sets_and_jobs_belong_to_the_key_that_made_them(api, keys):
    archive = upload(shapes_archive(per_class=2), "shapes.zip", "application/zip")
    made = api.post("/v1/datasets", files=[archive], headers=as_(keys, "alice"))
    assert made.status_code == 201, made.text
    dataset = made.json()
    assert dataset["owner"] == keys[1]["alice"].split("_")[1]
    assert [d["id"] for d in api.get("/v1/datasets", headers=as_(keys, "alice")).json()["data"]] == [dataset["id"]]
    assert api.get("/v1/datasets", headers=as_(keys, "bob")).json()["data"] == []
    assert_problem(api.get(f"/v1/datasets/{dataset['id']}", headers=as_(keys, "bob")), 404, "no data set")
    assert_problem(api.delete(f"/v1/datasets/{dataset['id']}", headers=as_(keys, "bob")), 404, "no data set")
    body = {"dataset_id": dataset["id"], "output_model": "shapes-owned", "epochs": 1, "input_size": 64}
    assert_problem(api.post("/v1/jobs/fine-tune", json=body, headers=as_(keys, "bob")), 422, "no data set")

    submitted = api.post("/v1/jobs/fine-tune", json=body, headers=as_(keys, "alice"))
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/events", f"/v1/jobs/{job_id}/artifacts/x.png"):
        assert_problem(api.get(path, headers=as_(keys, "bob")), 404, "no job")
    assert_problem(api.delete(f"/v1/jobs/{job_id}", headers=as_(keys, "bob")), 404, "no job")
    assert job_id not in [job["id"] for job in api.get("/v1/jobs", headers=as_(keys, "bob")).json()["data"]]
    assert job_id in [job["id"] for job in api.get("/v1/jobs", headers=as_(keys, "alice")).json()["data"]]
    assert api.get(f"/v1/datasets/{dataset['id']}", headers=as_(keys, "admin")).status_code == 200
    cancelled = api.delete(f"/v1/jobs/{job_id}", headers=as_(keys, "admin"))  # admin cancels others' jobs
    assert cancelled.status_code == 202 and cancelled.json()["state"] == "cancelled"


def test_a_key_made_while_the_service_runs_works_at_once(api, keys):
    key, _ = create_key(keys[0], ["jobs"], label="late")
    assert api.get("/v1/jobs", headers={"X-API-Key": key}).status_code == 200


def gazer_keys(*args: str, file: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gazer", "keys", *args, "--file", str(file)], capture_output=True,
                          text=True, timeout=60)


def test_gazer_keys_creates_lists_and_revokes_and_the_service_follows_at_once(api, keys):
    made = gazer_keys("create", "--scopes", "jobs", "--label", "ci runner", file=keys[0])
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    identifier = key.split("_")[1]
    assert api.get("/v1/jobs", headers={"X-API-Key": key}).status_code == 200

    listed = gazer_keys("list", file=keys[0])
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith(identifier))
    assert "jobs" in row and "ci runner" in row
    assert key not in listed.stdout and key.split("_")[2] not in listed.stdout  # nor the key, nor its secret
    assert "alice" in listed.stdout and "admin" in listed.stdout

    revoked = gazer_keys("revoke", identifier, file=keys[0])
    assert revoked.returncode == 0 and "revoked" in revoked.stderr, revoked.stderr
    assert_problem(api.get("/v1/jobs", headers={"X-API-Key": key}), 401, "not known")
    assert api.get("/v1/jobs", headers=as_(keys, "alice")).status_code == 200  # the others stay
    again = gazer_keys("revoke", identifier, file=keys[0])
    assert again.returncode == 1 and "no key" in again.stderr


def test_a_keyed_services_schema_names_its_keys_so_that_the_docs_page_can_send_one(api):
    schema = api.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"] == {
        "HTTPBearer": {"type": "http", "scheme": "bearer", "description": ANY},
        "APIKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": ANY}}
    assert schema["paths"]["/v1/models/{model}/predict"]["post"]["security"] == [{"HTTPBearer": []},
                                                                                 {"APIKeyHeader": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]


def test_pages_of_other_origins_and_unknown_hosts_are_refused(api, keys, client):
    foreign = api.get("/v1/jobs", headers={**as_(keys, "alice"), "Origin": "http://evil.example"})
    assert_problem(foreign, 403, "evil.example")
    same = api.get("/v1/jobs", headers={**as_(keys, "alice"), "Origin": "http://localhost"})
    assert same.status_code == 200
    # open (no keys): only loopback names, so a rebound DNS name cannot reach the service
    assert_problem(client.get("/healthz", headers={"Host": "attacker.example"}), 400, "attacker.example")
    assert client.get("/healthz", headers={"Host": "127.0.0.1:8000"}).status_code == 200
    # two Host headers: the check read the last, where a proxy or the app may read the first
    twice = client.get("/healthz", headers=[("Host", "attacker.example"), ("Host", "localhost")])
    assert_problem(twice, 400, "names 2")


def test_allowed_cors_origins_get_cors_headers(tmp_path):
    settings = Settings(data_dir=tmp_path, cors_origins="https://app.example")
    with TestClient(base_url="http://localhost", app=create_app(settings)) as client:
        preflight = client.options("/v1/models", headers={"Origin": "https://app.example",
                                                          "Access-Control-Request-Method": "GET"})
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        assert_problem(client.get("/v1/models", headers={"Origin": "https://other.example"}), 403, "other.example")


def test_without_keys_the_service_will_not_listen_beyond_loopback(tmp_path):
    env = {**os.environ, "HOST": "0.0.0.0", "PORT": "1", "GAZER_DATA_DIR": str(tmp_path)}
    env.pop("GAZER_API_KEYS", None)
    refused = subprocess.run([sys.executable, "-m", "service"], env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "refusing to serve 0.0.0.0 without API keys" in refused.stderr
    assert refusal(Settings(data_dir=tmp_path), "127.0.0.1") is None
    assert refusal(Settings(data_dir=tmp_path), "::1") is None
    assert refusal(Settings(data_dir=tmp_path, allow_open=True), "0.0.0.0") is None
    create_key(tmp_path / "keys.json", ["admin"])
    assert refusal(Settings(data_dir=tmp_path, api_keys=tmp_path / "keys.json"), "0.0.0.0") is None


def test_a_key_file_that_cannot_be_read_stops_the_start_and_a_bad_edit_keeps_the_keys_before_it(tmp_path, caplog):
    """A mistyped GAZER_API_KEYS started a service that said it was ready and refused every key
    (401); a file that is not JSON answered 500 to every request."""
    for path, words in ((tmp_path / "typo.json", "No such file"), (tmp_path / "bad.json", "Invalid JSON")):
        if path.name == "bad.json":
            path.write_text("not json")
        why = refusal(Settings(data_dir=tmp_path, api_keys=path), "127.0.0.1")
        assert why is not None and str(path) in why and words in why and "gazer keys create" in why, why
    env = {**os.environ, "GAZER_API_KEYS": str(tmp_path / "typo.json"), "PORT": "1", "GAZER_DATA_DIR": str(tmp_path)}
    refused = subprocess.run([sys.executable, "-m", "service"], env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "GAZER_API_KEYS=" in refused.stderr, refused.stderr

    path = tmp_path / "keys.json"
    key, _ = create_key(path, ["admin"])
    settings = Settings(data_dir=tmp_path / "data", api_keys=path)
    with TestClient(base_url="http://localhost", app=create_app(settings), raise_server_exceptions=False) as api:
        assert api.get("/v1/models", headers={"X-API-Key": key}).status_code == 200
        path.write_text(path.read_text()[:-5])  # a hand edit gone wrong
        with caplog.at_level(logging.ERROR, logger="service.auth"):
            for _ in range(3):
                assert api.get("/v1/models", headers={"X-API-Key": key}).status_code == 200
        assert [record.message for record in caplog.records].count(
            next(record.message for record in caplog.records if "cannot be read" in record.message)) == 1
        assert "the 1 keys read before stay in force" in caplog.text


def test_a_key_file_with_an_id_twice_is_refused_and_a_file_gone_is_logged(tmp_path, caplog):
    """Two records of one id shared what they own, or a corrected record appended was ignored (the
    first one counted); a file gone (a deploy's mv, then cp) refused every key without a word."""
    path = tmp_path / "keys.json"
    key, _ = create_key(path, ["admin"])
    record = json.loads(path.read_text())["keys"][0]
    path.write_text(json.dumps({"keys": [record, {**record, "scopes": ["predict"]}]}))
    why = refusal(Settings(data_dir=tmp_path, api_keys=path), "127.0.0.1")
    assert why is not None and f"key id {record['id']} appears twice" in why, why
    path.write_text(json.dumps({"keys": [record]}))
    settings = Settings(data_dir=tmp_path / "data", api_keys=path)
    with TestClient(base_url="http://localhost", app=create_app(settings), raise_server_exceptions=False) as api:
        assert api.get("/v1/models", headers={"X-API-Key": key}).status_code == 200
        path.rename(tmp_path / "moved.json")
        with caplog.at_level(logging.ERROR, logger="service.auth"):
            assert api.get("/v1/models", headers={"X-API-Key": key}).status_code == 401
        assert f"the key file {path} is gone: no key is accepted until it is back" in caplog.text


def test_model_names_and_data_sets_are_held_per_key_within_quotas(keys, tmp_path):
    settings = Settings(data_dir=tmp_path, api_keys=keys[0], max_datasets_per_key=1, max_models_per_key=1)
    with TestClient(base_url="http://localhost", app=create_app(settings), raise_server_exceptions=False) as api:
        archive = upload(shapes_archive(per_class=2), "shapes.zip", "application/zip")
        alices = api.post("/v1/datasets", files=[archive], headers=as_(keys, "alice")).json()
        assert_problem(api.post("/v1/datasets", files=[archive], headers=as_(keys, "alice")), 403,
                       "GAZER_MAX_DATASETS_PER_KEY")
        # before the upload is read: a key at its quota had any number of 500 MB uploads taken in
        assert post_lazily(api, "/v1/datasets", as_(keys, "alice"), mebibytes=40) == (403, 0)
        bobs = api.post("/v1/datasets", files=[archive], headers=as_(keys, "bob")).json()

        def fine_tune(who: str, dataset: dict, output: str):
            body = {"dataset_id": dataset["id"], "output_model": output, "epochs": 1, "input_size": 64}
            return api.post("/v1/jobs/fine-tune", json=body, headers=as_(keys, who))

        assert fine_tune("alice", alices, "alices").status_code == 202
        assert fine_tune("alice", alices, "alices").status_code == 202  # a new version of her own name
        assert_problem(fine_tune("alice", alices, "another"), 403, "GAZER_MAX_MODELS_PER_KEY")
        assert_problem(fine_tune("bob", bobs, "alices"), 403, "belongs to another key")
        for look_alike in ("Alices", "ALICES"):  # each was a model of bob's listed beside hers
            assert_problem(fine_tune("bob", bobs, look_alike), 403, "differs only in case from 'alices', which "
                                                                    "belongs to another key")
        assert fine_tune("admin", alices, "alices").status_code == 202



def test_a_key_has_one_data_set_extracted_at_a_time(keys, tmp_path, monkeypatch):
    """Two uploads of one client held both ingest slots for 90 s (300 WebPs declaring 6300x6300
    each, in 4.3 KB), and another key's waited 62.5 s for a 503. Now a key's second upload is a
    429 at once, and another key's takes the other slot."""
    release, started = held_ingests(monkeypatch)
    settings = Settings(data_dir=tmp_path, api_keys=keys[0])
    with TestClient(base_url="http://localhost", app=create_app(settings), raise_server_exceptions=False) as api, \
            ThreadPoolExecutor(3) as pool:
        archive = upload(shapes_archive(per_class=2), "shapes.zip", "application/zip")

        def send(who: str):
            return api.post("/v1/datasets", files=[archive], headers=as_(keys, who))

        alices = pool.submit(send, "alice")
        try:
            assert started.acquire(timeout=60), "alice's upload never started"
            again = pool.submit(send, "alice").result(timeout=10)
            assert_problem(again, 429, "GAZER_MAX_DATASET_INGESTS_PER_CLIENT")
            assert again.headers["Retry-After"] == "1"
            assert post_lazily(api, "/v1/datasets", as_(keys, "alice"), mebibytes=40) == (429, 0)  # unread
            bobs = pool.submit(send, "bob")
            assert started.acquire(timeout=10), "bob's upload never started"
        finally:
            release.set()
        assert [alices.result().status_code, bobs.result().status_code] == [201, 201]
        assert send("alice").status_code == 201  # its share is free again
    assert not api.app.state.dataset_ingests.of_client


def test_a_keys_listing_and_quota_parse_no_other_keys_descriptions(keys, tmp_path):
    """Every description was parsed before the owner was checked: 480 MB of alice's made bob's
    listing take 1.4 s. Here hers cannot be parsed at all, and bob's listing and quota check
    still answer; a data set stored before its owner had a file of its own is still hers."""
    settings = Settings(data_dir=tmp_path, api_keys=keys[0])
    with TestClient(base_url="http://localhost", app=create_app(settings), raise_server_exceptions=False) as api:
        archive = upload(shapes_archive(per_class=2), "shapes.zip", "application/zip")
        alices = [api.post("/v1/datasets", files=[archive], headers=as_(keys, "alice")).json()["id"]
                  for _ in range(2)]
        (tmp_path / "datasets" / alices[0] / "dataset.json").write_text("{not json")
        assert api.get("/v1/datasets", headers=as_(keys, "bob")).json() == {"data": [], "count": 0}
        bobs = api.post("/v1/datasets", files=[archive], headers=as_(keys, "bob"))
        assert bobs.status_code == 201, bobs.text
        listed = api.get("/v1/datasets", headers=as_(keys, "bob")).json()["data"]
        assert [d["id"] for d in listed] == [bobs.json()["id"]]

        (tmp_path / "datasets" / alices[1] / datasets.OWNER).unlink()
        assert api.get(f"/v1/datasets/{alices[1]}", headers=as_(keys, "alice")).status_code == 200
        assert_problem(api.get(f"/v1/datasets/{alices[1]}", headers=as_(keys, "bob")), 404, "no data set")


def test_requests_of_one_key_sent_at_once_cannot_pass_its_quota_together(keys, tmp_path, monkeypatch):
    """Quota 1: four data sets and eight new model names asked for at the same moment; one of
    each is taken, and the others are refused. A data set appears a while after its last quota
    check here, so that without the key's lock the uploads extracted at once (two) would all pass
    that check first."""
    ingest = datasets.ingest_archive

    def ingest_slowly(*args, **kwargs):
        *rest, admitted, room, charge = args

        @contextmanager
        def slowly() -> Iterator[None]:
            with admitted():
                time.sleep(0.3)
                yield

        return ingest(*rest, slowly, room, charge)

    monkeypatch.setattr(datasets, "ingest_archive", ingest_slowly)
    settings = Settings(data_dir=tmp_path, api_keys=keys[0], max_datasets_per_key=1, max_models_per_key=1,
                        max_dataset_ingests_per_client=4)
    with TestClient(base_url="http://localhost", app=create_app(settings), raise_server_exceptions=False) as api, \
            ThreadPoolExecutor(8) as pool:
        archive = upload(shapes_archive(per_class=2), "shapes.zip", "application/zip")
        made = list(pool.map(lambda _: api.post("/v1/datasets", files=[archive], headers=as_(keys, "alice")),
                             range(4)))
        assert sorted(answer.status_code for answer in made) == [201, 403, 403, 403], [a.text for a in made]
        assert len(api.get("/v1/datasets", headers=as_(keys, "alice")).json()["data"]) == 1
        dataset = next(answer.json()["id"] for answer in made if answer.status_code == 201)

        def fine_tune(output: str):
            body = {"dataset_id": dataset, "output_model": output, "epochs": 1, "input_size": 64}
            return api.post("/v1/jobs/fine-tune", json=body, headers=as_(keys, "alice"))

        submitted = list(pool.map(fine_tune, [f"name{index}" for index in range(8)]))
        assert sorted(answer.status_code for answer in submitted) == [202] + [403] * 7, [a.text for a in submitted]
        assert all("GAZER_MAX_MODELS_PER_KEY" in answer.json()["detail"]
                   for answer in submitted if answer.status_code == 403)


def test_a_stale_read_of_a_keys_names_never_releases_a_name_another_key_claimed_since(keys, tmp_path, monkeypatch):
    """Alice's names read just before bob claimed her old claim on "pets" (it held nothing, so it
    was free): checking her quota on another name must not release bob's claim."""
    settings = Settings(data_dir=tmp_path, api_keys=keys[0])
    with TestClient(base_url="http://localhost", app=create_app(settings), raise_server_exceptions=False) as api:
        fine_tune = fine_tunes_of_alice_and_bob(api, keys)

        alices = fine_tune("alice", "pets")
        api.delete(alices.headers["location"], headers=as_(keys, "admin"))  # her claim now holds nothing
        assert fine_tune("bob", "pets").status_code == 202
        read_names = versions.names_owned
        monkeypatch.setattr(versions, "names_owned", lambda models, owner: sorted({*read_names(models, owner), "pets"}))
        assert fine_tune("alice", "other").status_code == 202
        assert_problem(fine_tune("alice", "pets"), 403, "belongs to another key")  # bob's still


def fine_tunes_of_alice_and_bob(api, keys):
    """A data set each for alice and bob, and a call that submits a fine-tune of one's under a name."""
    archive = upload(shapes_archive(per_class=2), "shapes.zip", "application/zip")
    datasets = {who: api.post("/v1/datasets", files=[archive], headers=as_(keys, who)).json()["id"]
                for who in ("alice", "bob")}

    def fine_tune(who: str, output: str):
        body = {"dataset_id": datasets[who], "output_model": output, "epochs": 1, "input_size": 64}
        return api.post("/v1/jobs/fine-tune", json=body, headers=as_(keys, who))

    return fine_tune


def resnet18_weights() -> bytes:
    torch.manual_seed(0)
    network = torchvision.models.resnet18(num_classes=3)
    return save({key: value.contiguous() for key, value in network.state_dict().items()})


def test_an_event_stream_ends_when_its_key_is_revoked(tmp_path):
    """A stream opened before its key was revoked went on for up to an hour, to the job's result."""
    path = tmp_path / "keys.json"
    key, record = create_key(path, ["jobs"])
    settings = Settings(data_dir=tmp_path / "data", api_keys=path, event_stream_seconds=10)  # else: expired
    with TestClient(base_url="http://localhost", app=create_app(settings), raise_server_exceptions=False) as api:
        job = api.post("/v1/jobs/activation-maximization", headers={"X-API-Key": key},
                       json={"model": MODEL, "target": {"class": 1}, "steps": 10, "size": 64})
        assert job.status_code == 202, job.text
        try:
            with api.stream("GET", f"/v1/jobs/{job.json()['id']}/events", headers={"X-API-Key": key}) as stream:
                lines = stream.iter_lines()
                assert next(lines) == "event: progress"
                revoke_key(path, record.id)
                said = list(lines)
            assert "event: error" in said and '"status":401' in "".join(said), said
        finally:
            api.delete(f"/v1/jobs/{job.json()['id']}", headers={"X-API-Key": create_key(path, ["admin"])[0]})


def test_a_name_is_held_while_it_has_a_version_or_a_job_that_will_publish_there(keys, tmp_path):
    """Quota 1. A claim whose job ended with nothing published (cancelled here; failed or lost
    read the same) holds nothing: not the quota, not the name; a refused upload leaves nothing."""
    settings = Settings(data_dir=tmp_path, api_keys=keys[0], max_models_per_key=1)
    models = tmp_path / "models"
    with TestClient(base_url="http://localhost", app=create_app(settings), raise_server_exceptions=False) as api:
        fine_tune = fine_tunes_of_alice_and_bob(api, keys)

        def cancel(job) -> None:
            assert api.delete(job.headers["location"], headers=as_(keys, "admin")).json()["state"] == "cancelled"

        first = fine_tune("alice", "first")
        assert first.status_code == 202, first.text
        assert_problem(fine_tune("alice", "second"), 403, "GAZER_MAX_MODELS_PER_KEY")  # her queued job holds it
        assert_problem(fine_tune("bob", "first"), 403, "belongs to another key")
        cancel(first)
        second = fine_tune("alice", "second")
        assert second.status_code == 202, second.text
        cancel(fine_tune("bob", "first"))  # the name is free for others too

        published = api.post("/v1/models", data={"name": "second", "architecture": "resnet18", "input_size": 64},
                             files={"weights": ("w.safetensors", resnet18_weights())}, headers=as_(keys, "admin"))
        assert published.status_code == 201, published.text
        cancel(second)
        assert_problem(fine_tune("alice", "third"), 403, "GAZER_MAX_MODELS_PER_KEY")  # its version holds it
        assert_problem(fine_tune("bob", "second"), 403, "belongs to another key")
        deleted = api.delete("/v1/models/second@1", headers=as_(keys, "admin"))
        assert deleted.status_code == 204 and deleted.content == b"" and "content-type" not in deleted.headers
        assert fine_tune("alice", "third").status_code == 202

        refused = api.post("/v1/models", data={"name": "broken", "architecture": "resnet18"},
                           files={"weights": ("w.safetensors", b"junk")}, headers=as_(keys, "admin"))
        assert refused.status_code == 422, refused.text
        assert not (models / "broken").exists()

        versions.claim_name(models, "busy", "an-admin")
        uploads = [versions.start_upload(models, "busy") for _ in range(2)]  # two admin uploads hold it
        versions.end_upload(uploads[0])  # until the last of them ends
        assert_problem(fine_tune("bob", "busy"), 403, "belongs to another key")
        versions.end_upload(uploads[1])
        cancel(fine_tune("bob", "busy"))  # it ended with nothing published: the name was free

        assert fine_tune("bob", "fourth").status_code == 202
        assert not (models / "first").exists()  # bob's claim, its job cancelled: released as he claimed another


def test_a_name_has_at_most_its_limit_of_versions_and_its_key_may_delete_them_to_make_room(keys, tmp_path):
    """Limit 2, counting the versions published and the key's jobs that will publish there."""
    settings = Settings(data_dir=tmp_path, api_keys=keys[0], max_versions_per_model=2)
    with TestClient(base_url="http://localhost", app=create_app(settings), raise_server_exceptions=False) as api:
        fine_tune = fine_tunes_of_alice_and_bob(api, keys)

        def cancel(job) -> None:
            assert api.delete(job.headers["location"], headers=as_(keys, "admin")).json()["state"] == "cancelled"

        def publish_as_admin() -> None:  # an admin's uploads are not held to it
            published = api.post("/v1/models", data={"name": "mine", "architecture": "resnet18", "input_size": 64},
                                 files={"weights": ("w.safetensors", resnet18_weights())}, headers=as_(keys, "admin"))
            assert published.status_code == 201, published.text

        queued = [fine_tune("alice", "mine") for _ in range(2)]
        assert [job.status_code for job in queued] == [202, 202]
        assert_problem(fine_tune("alice", "mine"), 403, "GAZER_MAX_VERSIONS_PER_MODEL")
        cancel(queued[0])
        publish_as_admin()
        assert_problem(fine_tune("alice", "mine"), 403, "has 1 versions and 1 queued or running jobs")
        cancel(queued[1])
        publish_as_admin()
        assert_problem(fine_tune("alice", "mine"), 403, "has 2 versions and 0 queued or running jobs")
        assert_problem(api.delete("/v1/models/mine@1", headers=as_(keys, "bob")), 403, "only by the key that holds")
        assert_problem(api.delete(f"/v1/models/{MODEL}", headers=as_(keys, "bob")), 409, "built in")
        assert_problem(api.delete("/v1/models/mine@1", headers=as_(keys, "predictor")), 403, "'jobs' scope")
        assert api.delete("/v1/models/mine@1", headers=as_(keys, "alice")).status_code == 204
        assert api.get("/v1/models/mine/versions", headers=as_(keys, "admin")).json()["count"] == 1
        assert fine_tune("alice", "mine").status_code == 202
        assert_problem(fine_tune("alice", "mine"), 403, "GAZER_MAX_VERSIONS_PER_MODEL")
        publish_as_admin()  # beyond it: 2 versions, and her job to come
        assert api.get("/v1/models/mine/versions", headers=as_(keys, "admin")).json()["count"] == 2


def test_another_keys_job_does_not_keep_a_version_from_its_holder(keys, tmp_path):
    """It did (409, and only its key could cancel it), for as long as that key resubmitted. An
    admin, who may cancel it, is still told which job reads the version."""
    settings = Settings(data_dir=tmp_path, api_keys=keys[0])
    with TestClient(base_url="http://localhost", app=create_app(settings), raise_server_exceptions=False) as api:
        holding = fine_tunes_of_alice_and_bob(api, keys)("alice", "shared")  # alice holds the name
        assert holding.status_code == 202, holding.text
        published = api.post("/v1/models", data={"name": "shared", "architecture": "resnet18", "input_size": 64},
                             files={"weights": ("w.safetensors", resnet18_weights())}, headers=as_(keys, "admin"))
        assert published.status_code == 201, published.text
        reader = api.post("/v1/jobs/activation-maximization", headers=as_(keys, "bob"),
                          json={"model": "shared@1", "target": {"classes": [0]}, "size": 64, "steps": 1})
        assert reader.status_code == 202, reader.text
        assert_problem(api.delete("/v1/models/shared@1", headers=as_(keys, "admin")), 409,
                       f"model 'shared@1' is read by 1 queued or running job(s) ({reader.json()['id']}); cancel them")
        assert api.delete("/v1/models/shared@1", headers=as_(keys, "alice")).status_code == 204
