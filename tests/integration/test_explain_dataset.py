"""Explain-dataset jobs end to end: the real API, Redis and a Celery worker."""

from __future__ import annotations

import csv
from pathlib import PurePosixPath
import io
import time
import zipfile

import pytest
from PIL import Image

from support import SHAPE_CLASSES, shapes_archive, upload
from tests.integration.conftest import follow, make_client, wait_for

PER_CLASS = 3


@pytest.fixture(scope="module")
def shapes_dataset(api):
    created = api.post("/v1/datasets", files=[upload(shapes_archive(per_class=PER_CLASS, seed=5), "shapes.zip",
                                                     "application/zip")], data={"name": "shapes-explain"})
    assert created.status_code == 201, created.text
    return created.json()["id"]


def submit(api, body: dict) -> dict:
    response = api.post("/v1/jobs/explain-dataset", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def test_every_image_explained_with_faithfulness(api, workers, shapes_dataset):
    workers()
    job = submit(api, {"dataset_id": shapes_dataset, "method": "gradcam", "faithfulness": True, "batch_size": 4})
    events = follow(api, job["id"])
    done = events[-1][1]
    assert done["state"] == "succeeded", done["error"]
    counts = [data["progress"]["images"] for _, data in events if (data["progress"] or {}).get("phase") == "explaining"]
    assert counts and counts == sorted(counts) and counts[-1] == 3 * PER_CLASS
    result = done["result"]
    assert result["images"] == result["explained"] == 3 * PER_CLASS and result["failed"] == 0
    assert result["method"] == "gradcam" and result["layer"] == "head"

    archive = zipfile.ZipFile(io.BytesIO(api.get(result["heatmaps"]).content))
    names = sorted(archive.namelist())
    assert sorted(name.split("/")[0] for name in names) == sorted(SHAPE_CLASSES * PER_CLASS)
    assert all(name.endswith(".png") for name in names) and len(set(names)) == len(names)
    for name in names:
        heatmap = Image.open(io.BytesIO(archive.read(name)))
        assert heatmap.mode == "L" and heatmap.size == (96, 96)  # the upload's size, as /explain draws it

    rows = list(csv.DictReader(io.StringIO(api.get(result["table"]).text)))
    assert sorted(row["heatmap"] for row in rows) == names
    for row in rows:
        assert row["class"] in SHAPE_CLASSES and row["file"].startswith(row["class"] + "/") and not row["error"]
        stored = PurePosixPath(row["file"])  # class/NNNNNN.png, kept in the archive's order
        assert row["uploaded_as"] == f"{row['class']}/{int(stored.stem):03d}.png"  # shapes_archive's own name
        assert 0 <= int(row["predicted_index"]) < 1000 and row["predicted_label"]
        assert 0 < float(row["probability"]) <= 1
        if row["flat"] == "True":  # ranks no pixel first: no scores
            assert row["deletion"] == row["insertion"] == ""
        else:
            assert row["flat"] == "False" and 0 <= float(row["deletion"]) <= 1 and 0 <= float(row["insertion"]) <= 1

    assert [entry["label"] for entry in result["classes"]] == sorted(SHAPE_CLASSES)
    for entry in result["classes"]:
        scored = [row for row in rows if row["class"] == entry["label"] and row["flat"] == "False"]
        assert entry["images"] == PER_CLASS and entry["scored"] == len(scored) > 0
        assert 0 <= entry["deletion"] <= 1 and 0 <= entry["insertion"] <= 1
        mean_map = Image.open(io.BytesIO(api.get(entry["mean_map"]).content))
        assert mean_map.mode == "RGB" and mean_map.size == (224, 224)


def test_without_faithfulness_no_scores(api, workers, shapes_dataset):
    workers()
    job = submit(api, {"dataset_id": shapes_dataset, "method": "cam", "batch_size": 16})
    done = wait_for(api, job["id"], ("succeeded", "failed"), timeout=300)
    assert done["state"] == "succeeded", done["error"]
    rows = list(csv.DictReader(io.StringIO(api.get(done["result"]["table"]).text)))
    assert len(rows) == 3 * PER_CLASS and "deletion" not in rows[0] and "insertion" not in rows[0]
    assert "deletion" not in done["result"]["classes"][0]


def test_cancel_stops_within_a_batch(api, workers, shapes_dataset):
    workers()
    job = submit(api, {"dataset_id": shapes_dataset, "method": "integrated_gradients", "options": {"steps": 512},
                       "batch_size": 64})  # one batch of every image: minutes of work
    wait_for(api, job["id"], ("running",), timeout=120, condition=lambda j: (j["progress"] or {}).get("phase"))
    time.sleep(1)  # into the batch
    assert api.delete(f"/v1/jobs/{job['id']}").status_code == 202
    done = wait_for(api, job["id"], ("cancelled", "failed", "succeeded"), timeout=30)
    assert done["state"] == "cancelled", done
    # what it wrote stays, whole: a zip that opens (no image was explained before the cancel) and the table's header
    listed = {artifact["name"]: artifact["url"]
              for artifact in api.get(f"/v1/jobs/{job['id']}/artifacts").json()["data"]}
    assert set(listed) == {"heatmaps.zip", "explanations.csv"}, listed
    assert zipfile.ZipFile(io.BytesIO(api.get(listed["heatmaps.zip"]).content)).namelist() == []
    assert api.get(listed["explanations.csv"]).text.startswith("file,uploaded_as,class,")


@pytest.mark.parametrize("body, status, code, field", [
    ({"model": "resnet9000"}, 422, "invalid-request", None),
    ({"dataset_id": "nope"}, 422, "invalid-request", None),
    ({"method": "magic"}, 422, "unknown-method", "method"),
    ({"method": "gradcam", "options": {"steps": 5}}, 422, "invalid-request", "steps"),
    ({"method": "integrated_gradients", "options": {"steps": 100000}}, 422, "invalid-request", "steps"),
    ({"method": "integrated_gradients", "options": {"steps": "many"}}, 422, "invalid-request", "options.steps"),
    ({"method": "integrated_gradients", "options": {"steps": 2.5}}, 422, "invalid-request", "options.steps"),
    ({"method": "integrated_gradients", "options": {"baseline": "grey"}}, 422, "invalid-request", "baseline"),
    ({"method": "gradcam", "layer": "conv99"}, 422, "unknown-layer", "layer"),
    ({"method": "cam", "layer": "blocks.3"}, 422, "unknown-layer", "layer"),
    ({"batch_size": 0}, 422, None, "batch_size"),
    ({"options": {f"o{i}": 1 for i in range(17)}}, 422, None, "options"),
])
def test_bad_requests_are_refused_before_queueing(api, shapes_dataset, body, status, code, field):
    response = api.post("/v1/jobs/explain-dataset", json={"dataset_id": shapes_dataset, **body})
    assert response.status_code == status, response.text
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    if code:
        assert problem["type"].endswith(code), problem
    if field:
        assert any(field in error["field"] for error in problem["errors"]), problem


def test_cost_budgets_per_image_and_per_job(redis_server, shared_dir, shapes_dataset):
    body = {"dataset_id": shapes_dataset, "method": "integrated_gradients", "options": {"steps": 64}}
    with make_client(redis_server, shared_dir, max_explain_cost=100) as small_image_budget:
        refused = small_image_budget.post("/v1/jobs/explain-dataset", json=body)
        assert refused.status_code == 422 and "128 forward passes per image" in refused.json()["detail"], refused.text
    with make_client(redis_server, shared_dir, max_explain_job_cost=1000) as small_job_budget:
        refused = small_job_budget.post("/v1/jobs/explain-dataset", json=body)
        assert refused.status_code == 422 and f"{128 * 3 * PER_CLASS} forward passes" in refused.json()["detail"]
        assert any(error["field"] == "dataset_id" for error in refused.json()["errors"])
