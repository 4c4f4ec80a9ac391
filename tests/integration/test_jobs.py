"""Jobs end to end with a real Redis, real Celery workers and the real API."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from support import SHAPE_CLASSES, encode, shape_image, shapes_archive, upload
from tests.integration.conftest import LEASE_SECONDS, follow, make_client, wait_for


def submit(api, kind: str, body: dict) -> dict:
    response = api.post(f"/v1/jobs/{kind}", json=body)
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/v1/jobs/{response.json()['id']}"
    return response.json()


def long_maximization(steps: int = 10000) -> dict:
    return {"model": "efficientnet_lite0", "target": {"class": 1}, "steps": steps, "size": 64}


def test_fine_tune_then_predict_with_the_new_model(api, workers):
    workers()
    created = api.post("/v1/datasets", files=[upload(shapes_archive(per_class=10), "shapes.zip", "application/zip")],
                       data={"name": "shapes"})
    assert created.status_code == 201, created.text
    dataset = created.json()
    assert dataset["classes"] == sorted(SHAPE_CLASSES) and set(dataset["counts"].values()) == {10}
    job = submit(api, "fine-tune", {
        "base_model": "efficientnet_lite0", "dataset_id": dataset["id"], "output_model": "shapes",
        "strategy": "fine_tune", "epochs": 4, "batch_size": 8, "input_size": 64, "lr": 0.01,
        "backbone_lr": 0.001, "unfreeze_blocks": 3, "early_stopping_patience": 4, "seed": 1,
        "augmentation": {"rotation": 5, "zoom": 0.05, "shear": 0, "color_jitter": 0.05}})
    assert job["state"] == "queued"
    done = wait_for(api, job["id"], ("succeeded", "failed"), timeout=600)
    assert done["state"] == "succeeded", done
    assert done["result"]["model"] == {"id": "shapes", "version": 1}
    assert done["progress"] == {"fraction": 1.0}  # no phase ("exporting") left showing
    metrics = done["result"]["metrics"]
    assert len(metrics["history"]) >= 1 and len(metrics["confusion_matrix"]) == 3
    assert api.get(metrics["confusion_matrix_url"]).json() == {"classes": metrics["classes"],
                                                               "matrix": metrics["confusion_matrix"]}
    assert set(metrics["per_class_accuracy"]) == set(SHAPE_CLASSES)
    report = done["result"]["report"]  # what it got wrong and where it looks (core/training/report.py)
    assert set(report["background_reliance"]) == set(SHAPE_CLASSES) and report["seconds"] > 0
    document = api.get(report["url"]).json()
    assert len(document["mistakes"]) == report["mistakes"] and len(document["classes"]) == 3
    mean_maps = [entry["mean_gradcam"]["picture"] for entry in document["classes"] if "mean_gradcam" in entry]
    assert mean_maps and api.get(mean_maps[0]).headers["content-type"] == "image/png"
    listed = api.get(f"/v1/jobs/{job['id']}/artifacts").json()  # the report's pictures too, not only report.json
    assert listed["count"] == len(listed["data"]) and {item["url"] for item in listed["data"]} >= {report["url"],
                                                                                                   *mean_maps}

    detail = api.get("/v1/models/shapes").json()  # served at once, no restart
    assert detail["num_classes"] == 3 and detail["input_size"] == 64 and detail["version"] == 1
    rng = np.random.default_rng(123)
    expected = [kind for kind in SHAPE_CLASSES for _ in range(4)]
    files = [upload(encode(shape_image(kind, rng), "PNG"), f"{i}.png", "image/png") for i, kind in enumerate(expected)]
    response = api.post("/v1/models/shapes@1/predict", files=files, data={"top_k": 3})
    assert response.status_code == 200, response.text
    predicted = [r["predictions"][0]["label"] for r in response.json()["results"]]
    correct = sum(p == e for p, e in zip(predicted, expected))
    print(f"fine-tuned shapes model: {correct}/{len(expected)} correct on new images; "
          f"val accuracy {metrics['val_accuracy']:.2f}")
    assert correct >= 9
    explained = api.post("/v1/models/shapes/explain", files=files[:1], data={"method": "gradcam"})
    assert explained.status_code == 200, explained.text


def test_activation_maximization_end_to_end(api, workers):
    workers()
    job = submit(api, "activation-maximization", {
        "model": "efficientnet_lite0", "target": {"class": 130}, "steps": 25, "size": 96, "seed": 3})
    done = wait_for(api, job["id"], ("succeeded", "failed"), timeout=300)
    assert done["state"] == "succeeded", done
    image = done["result"]["images"][0]
    assert image["target"] == {"class": 130, "label": "flamingo"}
    png = api.get(image["url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    # a cache revalidates it (If-None-Match: 304 with the ETag), and HEAD gives its headers alone
    cached = api.get(image["url"], headers={"If-None-Match": png.headers["etag"]})
    assert cached.status_code == 304 and cached.content == b"" and cached.headers["etag"] == png.headers["etag"]
    assert api.get(image["url"], headers={"If-None-Match": '"other"'}).content == png.content
    # a Range is served (206); one that does not parse, or ends before it starts, is ignored (RFC 9110 14.2)
    part = api.get(image["url"], headers={"Range": "bytes=1-3"})
    assert part.status_code == 206 and part.content == png.content[1:4], part.text
    for malformed in ("bytes=abc", "pages=0-5", "bytes=5-2", "bytes"):
        whole = api.get(image["url"], headers={"Range": malformed})
        assert whole.status_code == 200 and whole.content == png.content, (malformed, whole.text)
    beyond = api.get(image["url"], headers={"Range": f"bytes={len(png.content)}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(png.content)}"
    assert beyond.headers["content-type"] == "application/problem+json"  # Starlette's was plain text
    assert beyond.json()["type"] == "/problems/range-not-satisfiable", beyond.text
    stale = api.get(image["url"], headers={"Range": f"bytes={len(png.content)}-", "If-Range": '"other"'})
    assert stale.status_code == 200 and stale.content == png.content  # the Range is for another version: ignored
    head = api.head(image["url"])
    assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(len(png.content))
    assert Image.open(io.BytesIO(png.content)).size == (96, 96)
    # `probability` is at 96 px, as optimized; `served_probability` is what predict gives its PNG
    # (resized and cropped to 224): a user found flamingo at 1.0 by the one, outside the top 3 by the other
    predicted = api.post("/v1/models/efficientnet_lite0/predict", files=[upload(png.content, "am.png", "image/png")],
                         data={"top_k": 1000}).json()["results"][0]["predictions"]
    served = next(prediction["probability"] for prediction in predicted if prediction["index"] == 130)
    assert abs(image["served_probability"] - served) < 1e-3 and 0 <= image["probability"] <= 1
    history = done["result"]["activation_per_step"]
    assert len(history) == 25 and history[-1][0] > history[0][0]
    assert done["result"]["activation_steps"] == list(range(1, 26))  # every step, up to 500
    assert api.get(f"/v1/jobs/{job['id']}/artifacts/..%2Fsecret").status_code == 404
    assert api.get(f"/v1/jobs/{job['id']}/artifacts/{'a' * 300}").status_code == 404  # not ENAMETOOLONG's 500


def test_layer_channels_as_one_batch(api, workers):
    workers()
    job = submit(api, "activation-maximization", {
        "model": "efficientnet_lite0", "target": {"layer": "blocks.10", "channels": [0, 7, 42]}, "steps": 8,
        "size": 64, "parameterization": "pixel"})
    done = wait_for(api, job["id"], ("succeeded", "failed"), timeout=300)
    assert done["state"] == "succeeded", done
    assert [i["target"]["channel"] for i in done["result"]["images"]] == [0, 7, 42]


def test_cancel_a_running_job(api, workers):
    workers()
    job = submit(api, "activation-maximization", long_maximization())
    wait_for(api, job["id"], ("running",), timeout=120, condition=lambda j: (j["progress"] or {}).get("step", 0) >= 2)
    response = api.delete(f"/v1/jobs/{job['id']}")
    assert response.status_code == 202 and response.json()["cancel_requested"]
    done = wait_for(api, job["id"], ("cancelled", "failed", "succeeded"), timeout=60)
    assert done["state"] == "cancelled"


def test_a_job_past_the_workers_time_limit_fails_and_says_so(api, workers, start_worker):
    workers().stop()  # the module's worker must not take the job; `workers()` starts another later
    limited = start_worker(max_job_seconds=4)
    try:
        job = submit(api, "activation-maximization", long_maximization())
        done = wait_for(api, job["id"], ("failed", "cancelled", "succeeded"), timeout=120)
        assert done["state"] == "failed", done
        assert done["error"]["type"] == "/problems/job-time-limit" and "GAZER_MAX_JOB_SECONDS" in done["error"]["detail"]
        assert done["progress"]["step"] >= 1  # it ran until the limit, then stopped at its next step
        quick = submit(api, "activation-maximization", long_maximization(steps=2))  # the worker serves on
        assert wait_for(api, quick["id"], ("failed", "cancelled", "succeeded"), timeout=120)["state"] == "succeeded"
    finally:
        limited.stop()


def test_cancel_a_queued_job_before_it_runs(api, workers):
    workers()
    blocker = submit(api, "activation-maximization", long_maximization())
    queued = submit(api, "activation-maximization", long_maximization())
    assert api.delete(f"/v1/jobs/{queued['id']}").json()["state"] == "cancelled"
    api.delete(f"/v1/jobs/{blocker['id']}")
    wait_for(api, blocker["id"], ("cancelled",), timeout=60)
    time.sleep(1)
    assert api.get(f"/v1/jobs/{queued['id']}").json()["attempts"] == 0
    # an ended job has nothing to cancel: it was a 202 that changed nothing
    again = api.delete(f"/v1/jobs/{queued['id']}")
    assert again.status_code == 409 and again.json()["detail"] == (
        f"job {queued['id']} has already ended (cancelled): there is nothing to cancel"), again.text


def test_progress_events_stream(api, workers):
    workers()
    job = submit(api, "activation-maximization", {**long_maximization(300), "size": 64})
    events = follow(api, job["id"])
    assert events[-1][0] == "end" and events[-1][1]["state"] == "succeeded"
    fractions = [data["progress"]["fraction"] for kind, data in events if kind == "progress"]
    assert len(fractions) >= 2 and fractions == sorted(fractions)
    assert events[-1][1] == api.get(f"/v1/jobs/{job['id']}").json()  # as GET shows it: not the record's owner


def test_a_worker_told_to_stop_puts_its_running_job_back_in_the_queue(api, workers):
    """SIGTERM (a restart, `make run` ending) waited for the job to finish, then the worker was
    killed and the job read as lost; now it stops at its next step and the job runs afresh on the
    next worker."""
    worker = workers()
    # 32 px: the job runs twice, and at 64 px its second run passed 300 s when two suites shared the cores
    job = submit(api, "activation-maximization", {**long_maximization(400), "size": 32})
    wait_for(api, job["id"], ("running",), timeout=120, condition=lambda j: (j["progress"] or {}).get("step", 0) >= 1)
    worker.process.terminate()
    worker.process.wait(timeout=30)
    queued = api.get(f"/v1/jobs/{job['id']}").json()
    assert queued["state"] == "queued" and queued["progress"] == {"fraction": 0.0} and queued["attempts"] == 1, queued
    assert "goes back to the queue, to run afresh: this worker is stopping" in worker.log()
    workers()
    done = wait_for(api, job["id"], ("succeeded", "failed"), timeout=300)
    assert done["state"] == "succeeded" and done["attempts"] == 2


def test_worker_killed_mid_job_leaves_the_job_failed(api, workers):
    worker = workers()
    job = submit(api, "activation-maximization", long_maximization())
    wait_for(api, job["id"], ("running",), timeout=120, condition=lambda j: (j["progress"] or {}).get("step", 0) >= 1)
    worker.kill()
    done = wait_for(api, job["id"], ("failed", "succeeded", "cancelled"), timeout=LEASE_SECONDS * 5)
    assert done["state"] == "failed"
    assert done["error"]["type"] == "/problems/worker-lost"
    listed = api.get("/v1/jobs", params={"state": "running"}).json()
    assert job["id"] not in [j["id"] for j in listed["data"]]
    workers()  # a new worker; the dead one's message must not run the job again
    time.sleep(2)
    assert api.get(f"/v1/jobs/{job['id']}").json()["state"] == "failed"


def test_job_records_survive_an_api_restart(redis_server, shared_dir, api, workers):
    workers()
    job = submit(api, "activation-maximization", {**long_maximization(5), "size": 32})
    with make_client(redis_server, shared_dir) as restarted:
        done = wait_for(restarted, job["id"], ("succeeded", "failed"), timeout=120)
        assert done["state"] == "succeeded" and done["id"] == job["id"]
        assert job["id"] in [j["id"] for j in restarted.get("/v1/jobs").json()["data"]]


def test_a_job_longer_than_the_visibility_timeout_runs_once(api, workers, start_worker):
    workers().stop()
    impatient = [start_worker(visibility_timeout=1), start_worker(visibility_timeout=1)]
    # about 6 s here (60 steps took 2.1 s: too close to the timeout plus a look for expired messages)
    job = submit(api, "activation-maximization", {**long_maximization(200), "size": 96})
    done = wait_for(api, job["id"], ("succeeded", "failed"), timeout=300)
    assert done["state"] == "succeeded" and done["attempts"] == 1
    deadline = time.time() + 20
    while time.time() < deadline and not any("nothing run" in w.log() for w in impatient):
        time.sleep(0.5)
    assert any("nothing run" in w.log() for w in impatient), \
        "the message was never redelivered: " + "\n-----\n".join(w.log()[-4000:] for w in impatient)
    for worker in impatient:
        worker.stop()


def newest_job_ids(api) -> list[str]:
    """The ids at the top of the newest-first listing: a job queued since would come first
    (unlike a count, which the listing's page limit caps)."""
    return [job["id"] for job in api.get("/v1/jobs").json()["data"][:3]]


@pytest.mark.parametrize("kind, body, field", [
    ("fine-tune", {"dataset_id": "nope", "output_model": "x"}, "dataset_id"),
    ("fine-tune", {"dataset_id": "nope", "output_model": "x", "base_model": "resnet9000"}, "dataset_id"),
    ("fine-tune", {"dataset_id": "nope", "output_model": "x", "lr": -1}, "lr"),
    ("fine-tune", {"dataset_id": "nope", "output_model": "x", "epochs": 0}, "epochs"),
    ("fine-tune", {"dataset_id": "nope", "output_model": "x", "strategy": "magic"}, "strategy"),
    ("fine-tune", {"dataset_id": "nope", "output_model": "x", "bogus": 1}, "bogus"),
    ("activation-maximization", {"model": "resnet9000", "target": {"class": 1}}, "model"),
    ("activation-maximization", {"target": {"class": 1000}}, "target"),
    ("activation-maximization", {"target": {"layer": "conv99", "channels": [0]}}, "target.layer"),
    ("activation-maximization", {"target": {"layer": "blocks", "channels": [0]}}, "target.layer"),
    ("activation-maximization", {"target": {"layer": "blocks.1._swish", "channels": [0]}}, "target.layer"),
    ("activation-maximization", {"target": {"layer": "hidden", "channels": [0]}}, "target.layer"),
    ("activation-maximization", {"model": "efficientnet_lite0@²", "target": {"class": 1}}, "model"),
    ("activation-maximization", {"target": {"layer": "blocks.3", "channels": [9999]}}, "target.channels"),
    ("activation-maximization", {"target": {"class": 1}, "steps": -5}, "steps"),
    ("activation-maximization", {"target": {}}, "target"),
])
def test_bad_job_requests_are_422_and_queue_nothing(api, kind, body, field):
    before = newest_job_ids(api)
    response = api.post(f"/v1/jobs/{kind}", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert any(error["field"] == field or error["field"].startswith(field + ".")
               for error in response.json()["errors"]), response.text
    assert newest_job_ids(api) == before


def test_unknown_job_is_404(api):
    assert api.get("/v1/jobs/0123456789abcdef").status_code == 404
    assert api.delete("/v1/jobs/0123456789abcdef").status_code == 404


def test_activation_maximization_is_checked_without_taking_the_model(api):
    """Submitting reads the model's known layers and channels: an explanation holding the model
    (its lock) does not hold the submission up."""
    model = api.app.state.registry.get("efficientnet_lite0")
    answered: list = []
    submit_bad_channel = threading.Thread(target=lambda: answered.append(api.post(
        "/v1/jobs/activation-maximization", json={"target": {"layer": "blocks.3", "channels": [9999]}})))
    with model.lock:  # as a running explanation would
        submit_bad_channel.start()
        submit_bad_channel.join(timeout=60)
        assert answered, "the submission waited for the model lock"
    assert answered[0].status_code == 422
    assert answered[0].json()["errors"][0]["field"] == "target.channels"
