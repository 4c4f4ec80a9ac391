"""GET /metrics after real predictions and explanations; X-Request-ID on every response; JSON
log lines from `python -m service` carrying that id."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from core.explain import METHODS
from service.app import create_app
from service.settings import Settings
from support import chelsea, coffee, encode, upload
from tests.api.test_model_refusals import onnx_classifier
from tests.conftest import MODEL
from tests.held_method import GRADIENT_LAYER, HeldGradCAM
from tests.live_service import ROOT, free_port

PREDICT = "/v1/models/{model}/predict"
EXPLAIN = "/v1/models/{model}/explain"


def scrape(client) -> dict[tuple[str, frozenset], float]:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_predict_and_explain_are_counted_by_route_template_and_timed_by_stage(client):
    before = scrape(client)
    photos = [upload(encode(chelsea())), upload(encode(coffee()))]
    assert client.post(f"/v1/models/{MODEL}/predict", files=photos).status_code == 200
    assert client.post(f"/v1/models/{MODEL}/predict", files=[upload(b"not an image")]).status_code == 422
    explained = client.post(f"/v1/models/{MODEL}/explain", files=photos[:1],
                            data={"method": "gradcam", "layer": GRADIENT_LAYER})
    assert explained.status_code == 200
    after = scrape(client)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("gazer_http_requests_total", route=PREDICT, method="POST", status="200") == 1
    assert grew("gazer_http_requests_total", route=PREDICT, method="POST", status="422") == 1
    assert grew("gazer_http_requests_total", route=EXPLAIN, method="POST", status="200") == 1
    assert not any(MODEL in dict(labels).get("route", "") for _, labels in after), "a raw URL became a label"
    assert grew("gazer_http_request_duration_seconds_count", route=PREDICT, method="POST") == 2
    assert grew("gazer_http_request_duration_seconds_bucket", route=PREDICT, method="POST", le="+Inf") == 2
    assert grew("gazer_http_request_duration_seconds_sum", route=PREDICT, method="POST") > 0
    for stage in ("decode", "preprocess", "ort", "explain:gradcam", "render"):
        assert grew("gazer_inference_seconds_count", model=MODEL, stage=stage) >= 1, stage
        assert grew("gazer_inference_seconds_sum", model=MODEL, stage=stage) > 0, stage
    assert grew("gazer_batch_size_count", endpoint="predict") == 2
    assert grew("gazer_batch_size_sum", endpoint="predict") == 3
    assert grew("gazer_batch_size_sum", endpoint="explain") == 1
    assert grew("gazer_model_run_images_sum", runtime="onnx") == 2  # the two photos predicted
    assert grew("gazer_model_run_images_sum", runtime="torch") == 1  # the gradcam
    assert value(after, "gazer_models_loaded") >= 1
    assert value(after, "gazer_explain_slots") == 32 and value(after, "gazer_explain_slots_in_use") == 0
    # the session's embedded Redis: predictions queue no job (other test files' jobs may wait there)
    assert ("gazer_queue_depth", frozenset()) in after and grew("gazer_queue_depth") == 0
    assert ("gazer_job_records", frozenset()) in after


def test_a_deleted_models_series_are_dropped(client):
    """Else names made and deleted pile up: about 54 series each, one upload, predict and delete
    a second."""
    served = client.post("/v1/models", data={"name": "metered", "input_size": 32},
                         files={"onnx": ("m.onnx", onnx_classifier().SerializeToString())})
    assert served.status_code == 201, served.text
    assert client.post("/v1/models/metered/predict", files=[upload(encode(chelsea()))]).status_code == 200
    assert value(scrape(client), "gazer_inference_seconds_count", model="metered", stage="ort") == 1
    assert client.delete(f"/v1/models/metered@{served.json()['version']}").status_code == 204
    left = [labels for name, labels in scrape(client) if dict(labels).get("model") == "metered"]
    assert not left
    assert value(scrape(client), "gazer_inference_seconds_count", model=MODEL, stage="ort") >= 1


def test_unmatched_paths_share_one_label(client):
    before = scrape(client)
    for path in ("/no/such/page", "/v2/whatever/12345"):
        assert client.get(path).status_code == 404
    after = scrape(client)
    assert value(after, "gazer_http_requests_total", route="unmatched", method="GET", status="404") - \
        value(before, "gazer_http_requests_total", route="unmatched", method="GET", status="404") == 2
    assert not any("/no/such" in str(labels) for _, labels in after)


def test_the_web_page_its_files_and_the_docs_count_under_their_templates(client):
    for path in ("/", "/static/app.js", "/docs", "/docs-assets/swagger-ui.css", "/openapi.json"):
        assert client.get(path).status_code == 200, path
    samples = scrape(client)
    for route in ("/", "/static/{path}", "/docs", "/docs-assets/{path}", "/openapi.json"):  # it was `unmatched`
        assert value(samples, "gazer_http_requests_total", route=route, method="GET", status="200") >= 1, route


def test_request_ids_are_echoed_when_safe_and_generated_otherwise(client):
    assert client.get("/healthz", headers={"X-Request-ID": "trace-42.a:b_c"}).headers["x-request-id"] == \
        "trace-42.a:b_c"
    generated = {client.get("/healthz").headers["x-request-id"] for _ in range(3)}
    assert len(generated) == 3 and all(len(rid) == 32 for rid in generated)
    for bad in ("x" * 129, "a b", "<script>", "id\u00e9"):
        replaced = client.get("/healthz", headers={"X-Request-ID": bad.encode("utf-8")}).headers["x-request-id"]
        assert replaced != bad and len(replaced) == 32
    assert "x-request-id" in client.get("/no/such/page").headers
    assert client.post(f"/v1/models/{MODEL}/predict", files=[upload(b"junk")],
                       headers={"X-Request-ID": "bad-file"}).headers["x-request-id"] == "bad-file"


def test_slots_in_use_and_503s_on_an_app_of_its_own(one_slot_client, monkeypatch):
    held = HeldGradCAM()
    monkeypatch.setitem(METHODS, "gradcam", held)
    photo = [upload(encode(chelsea()))]
    running = threading.Thread(target=lambda: one_slot_client.post(
        f"/v1/models/{MODEL}/explain", files=photo,
        data={"method": "gradcam", "layer": GRADIENT_LAYER, "outputs": "map"}))
    running.start()
    try:
        assert held.started.wait(timeout=60)
        assert value(scrape(one_slot_client), "gazer_explain_slots_in_use") == 1
        assert one_slot_client.post(f"/v1/models/{MODEL}/explain", files=photo,
                                    data={"method": "saliency"}).status_code == 503
    finally:
        held.release.set()
        running.join(timeout=120)
    samples = scrape(one_slot_client)
    # This app's registry is its own: the session app's requests are not in it.
    assert value(samples, "gazer_http_503_responses_total", route=EXPLAIN) == 1
    assert value(samples, "gazer_http_requests_total", route=EXPLAIN, method="POST", status="503") == 1
    assert value(samples, "gazer_http_requests_total", route=EXPLAIN, method="POST", status="200") == 1
    assert value(samples, "gazer_explain_slots") == 1 and value(samples, "gazer_explain_slots_in_use") == 0


class Served:
    """`python -m service` on a free port, its output in a file."""

    def __init__(self, data_dir: Path, **env: str) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = data_dir / "service.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=ROOT, stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT,
            env={**os.environ, "PORT": self.url.rsplit(":", 1)[1], "GAZER_DATA_DIR": str(data_dir),
                 "PYTHONPATH": str(ROOT), **env})

    def wait(self) -> "Served":
        deadline = time.time() + 120
        while time.time() < deadline:
            assert self.process.poll() is None, self.log_path.read_text()
            try:
                httpx.get(f"{self.url}/healthz", timeout=2)
                return self
            except httpx.TransportError:
                time.sleep(0.3)
        raise AssertionError(self.log_path.read_text())

    def lines(self) -> list[str]:
        return self.log_path.read_text().splitlines()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def test_python_m_service_logs_json_lines_with_the_request_id_and_honours_access_log(tmp_path):
    (tmp_path / "on").mkdir(), (tmp_path / "off").mkdir()
    logged, quiet = Served(tmp_path / "on"), Served(tmp_path / "off", GAZER_ACCESS_LOG="0")
    try:
        for served in (logged.wait(), quiet.wait()):
            assert httpx.get(f"{served.url}/v1/models", headers={"X-Request-ID": "look-for-me"}).status_code == 200
            assert httpx.get(f"{served.url}/healthz", headers={"X-Request-ID": "a-probe"}).status_code == 200
        time.sleep(0.5)
    finally:
        logged.stop(), quiet.stop()
    entries = [json.loads(line) for line in logged.lines() if line.strip()]  # every line is one JSON object
    access = [e for e in entries if e.get("request_id") == "look-for-me"]
    assert access and access[0]["logger"] == "uvicorn.access" and access[0]["status"] == 200
    assert access[0]["path"] == "/v1/models" and access[0]["method"] == "GET"
    assert not [e for e in entries if e.get("request_id") == "a-probe"]  # a successful probe is no access line
    assert any(e["logger"] == "core.models.registry" and "efficientnet_lite0@1 loaded" in e["message"]
               for e in entries)
    assert any(e["logger"] == "uvicorn.error" for e in entries)
    quiet_entries = [json.loads(line) for line in quiet.lines() if line.strip()]
    assert quiet_entries and not any(e["logger"] == "uvicorn.access" for e in quiet_entries)


def test_a_crash_and_a_refused_body_still_carry_the_id_and_are_counted(tmp_path):
    """An app of its own, not started (no model, no Redis): a route that crashes answers 500
    from outside RequestContext; a body over the limit is refused before any route matches."""
    app = create_app(Settings(data_dir=tmp_path, max_request_bytes=100))

    @app.get("/crash")
    def crash() -> None:
        raise RuntimeError("boom")

    bare = TestClient(base_url="http://localhost", app=app, raise_server_exceptions=False)
    crashed = bare.get("/crash", headers={"X-Request-ID": "crash-1"})
    assert crashed.status_code == 500 and crashed.headers["x-request-id"] == "crash-1"
    refused = bare.post(f"/v1/models/{MODEL}/predict", content=b"x" * 1000, headers={"X-Request-ID": "big-1"})
    assert refused.status_code == 413 and refused.headers["x-request-id"] == "big-1"
    samples = scrape(bare)
    assert value(samples, "gazer_http_requests_total", route="/crash", method="GET", status="500") == 1
    assert value(samples, "gazer_http_requests_total", route="unmatched", method="POST", status="413") == 1
