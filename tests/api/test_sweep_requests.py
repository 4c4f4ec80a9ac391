"""A sweep request is checked before anything is queued: its space against the fine-tune
fields (422 naming `space.NAME`), its bounds, its base fine-tune's references."""

from __future__ import annotations

import pytest
import torch
import torchvision
from fastapi.testclient import TestClient
from safetensors.torch import save

from core.memory import training_bytes
from service.app import create_app
from support import shapes_archive, upload

BASE = {"dataset_id": "no-such-set", "output_model": "swept", "epochs": 2}


@pytest.mark.parametrize("body, field", [
    ({"space": {"lr": {"log_uniform": [1e-4, 100]}}}, "space.lr"),
    ({"space": {"momentum": {"uniform": [0.8, 0.99]}}}, "space.momentum"),
    ({"space": {"optimizer": {"choice": ["sgd", "lion"]}}}, "space.optimizer"),
    ({"space": {"head.dropout": {"log_uniform": [0.1, 0.5], "int": [1, 2]}}}, "space.head.dropout"),
    ({"space": {"lr": {"log_uniform": [1e-4, 1]}}, "trials": 201}, "trials"),
    ({"space": {"lr": {"log_uniform": [1e-4, 1]}}, "parallel": 0}, "parallel"),
    ({"space": {"lr": {"log_uniform": [1e-4, 1]}}, "metric": "train_loss"}, "metric"),
])
def test_a_bad_sweep_is_a_422_naming_the_field(client, body, field):
    response = client.post("/v1/jobs/sweep", json={"base": BASE, **body})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert field in [error["field"] for error in response.json()["errors"]], response.json()


def test_a_sweep_over_a_missing_data_set_is_a_422_and_no_job(client):
    before = client.get("/v1/jobs", params={"type": "sweep"}).json()["count"]
    response = client.post("/v1/jobs/sweep", json={"base": BASE, "space": {"lr": {"log_uniform": [1e-4, 1]}}})
    assert response.status_code == 422 and "no-such-set" in response.json()["detail"], response.text
    assert client.get("/v1/jobs", params={"type": "sweep"}).json()["count"] == before
    assert client.get("/v1/jobs", params={"parent": "0" * 32}).json() == {"data": [], "count": 0, "next": None}


@pytest.fixture(scope="module")
def shapes(client):
    response = client.post("/v1/datasets", files=[upload(shapes_archive(per_class=2), "s.zip", "application/zip")])
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_a_null_input_size_choice_is_the_base_models_size(client, shapes):
    base = {**BASE, "dataset_id": shapes}
    response = client.post("/v1/jobs/sweep", json={"base": base, "space": {"input_size": {"choice": [None]}},
                                                   "trials": 1})
    assert response.status_code == 202, response.text
    assert client.delete(response.headers["location"]).json()["state"] == "cancelled"


def test_the_memory_check_of_a_null_input_size_uses_the_base_models_size(shapes, app_settings):
    """At 64 px the heaviest trial fits this worker; at the base model's 224 px it does not."""
    fits, too_large = training_bytes(6, 3, 512, 64, 32), training_bytes(6, 3, 512, 224, 32)  # a batch: its 6 images
    settings = app_settings(worker_memory_bytes=(fits + too_large) // 2)
    with TestClient(base_url="http://localhost", app=create_app(settings), raise_server_exceptions=False) as client:
        base = {**BASE, "dataset_id": shapes, "batch_size": 512}
        response = client.post("/v1/jobs/sweep", json={"base": base, "space": {"input_size": {"choice": [64, None]}}})
        assert response.status_code == 422 and "GAZER_WORKER_MEMORY_BYTES" in response.json()["detail"], response.text
        response = client.post("/v1/jobs/sweep", json={"base": base, "space": {"input_size": {"choice": [64, 48]}}})
        assert response.status_code == 202, response.text
        client.delete(response.headers["location"])


@pytest.mark.parametrize("base, space, field", [
    ({"input_size": 32}, {"batch_size": {"choice": [1, 8]}}, "space.batch_size"),
    ({"input_size": 32, "batch_size": 1, "strategy": "feature_extraction"},
     {"strategy": {"choice": ["feature_extraction", "fine_tune"]}}, "base.batch_size"),
    ({"batch_size": 1}, {"input_size": {"int": [32, 96]}}, "base.batch_size"),
])
def test_a_space_that_can_sample_one_image_batches_on_small_inputs_is_refused(client, shapes, base, space, field):
    """Only the heaviest trials were checked, so such trials were queued and failed on the worker."""
    response = client.post("/v1/jobs/sweep", json={"base": {**BASE, "dataset_id": shapes, **base}, "space": space})
    assert response.status_code == 422 and "1 x 1" in response.json()["detail"], response.text
    assert response.json()["errors"][0]["field"] == field


def test_a_null_input_size_is_checked_at_the_bottom_too_a_base_model_may_be_small(client, shapes):
    """null is the base model's size: 32 for this one, under the sizes given, so its one-image
    batches would fail on the worker."""
    torch.manual_seed(0)
    weights = save({key: value.contiguous() for key, value in
                    torchvision.models.resnet18(num_classes=2).state_dict().items()})
    uploaded = client.post("/v1/models", data={"name": "small-base", "architecture": "resnet18", "input_size": 32},
                           files={"weights": ("w.safetensors", weights)})
    assert uploaded.status_code == 201, uploaded.text
    base = {**BASE, "dataset_id": shapes, "base_model": "small-base"}
    space = {"batch_size": {"choice": [1, 8]}, "input_size": {"choice": [None, 128]}}
    response = client.post("/v1/jobs/sweep", json={"base": base, "space": space})
    assert response.status_code == 422 and "1 x 1" in response.json()["detail"], response.text


@pytest.mark.parametrize("space, words", [
    ({"batch_size": {"choice": [1, 1.0]}}, "distinct"),
    ({"batch_size": {"choice": [None, 4]}}, "must be a int"),
])
def test_a_choice_repeated_or_null_where_the_field_takes_no_null_is_a_422(client, shapes, space, words):
    response = client.post("/v1/jobs/sweep", json={"base": {**BASE, "dataset_id": shapes}, "space": space})
    assert response.status_code == 422 and words in response.json()["detail"], response.text
    assert response.json()["errors"][0]["field"] == f"space.{next(iter(space))}"


def test_a_data_set_of_one_image_per_class_is_refused_for_training_as_it_leaves_nothing_to_validate_on(client):
    """Each class keeps at least one image for training, so with one image each no validation
    image is left, and the fine-tune would report metrics it never measured."""
    single = client.post("/v1/datasets", files=[upload(shapes_archive(per_class=1), "one.zip", "application/zip")])
    assert single.status_code == 201, single.text
    base = {**BASE, "dataset_id": single.json()["id"]}
    for path, body in (("/v1/jobs/fine-tune", base),
                       ("/v1/jobs/sweep", {"base": base, "space": {"lr": {"log_uniform": [1e-4, 1]}}})):
        refused = client.post(path, json=body)
        assert refused.status_code == 422 and "one image per class" in refused.json()["detail"], refused.text
        assert refused.json()["errors"][0]["field"].endswith("dataset_id"), refused.json()


@pytest.mark.parametrize("name", ["efficientnet_lite1", "EfficientNet_Lite1"])  # a look-alike was published
def test_a_fine_tune_may_not_publish_under_a_built_in_name(client, shapes, name):
    refused = client.post("/v1/jobs/fine-tune", json={**BASE, "dataset_id": shapes, "output_model": name})
    assert refused.status_code == 422 and "is a built-in model's name" in refused.json()["detail"], refused.text
    assert refused.json()["errors"][0]["field"] == "output_model"


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_a_number_that_is_not_finite_is_refused_as_such(client, value):
    """Python's JSON reads NaN and Infinity; they were refused as over a bound ("less than or equal to 10")."""
    body = '{"dataset_id": "x", "output_model": "y", "lr": %s}' % value
    refused = client.post("/v1/jobs/fine-tune", content=body, headers={"Content-Type": "application/json"})
    assert refused.status_code == 422 and "finite number" in refused.text, refused.text
    # one error, on `lr` itself: not one on `lr.constrained-float` and one on `lr.literal['auto']`
    assert refused.json()["errors"] == [{"field": "lr", "message": "Input should be a finite number, or 'auto'"}]


@pytest.mark.parametrize("path, body, field", [
    ("/v1/jobs/fine-tune", {"dataset_id": "x", "output_model": "y", "lr": True}, "lr"),
    ("/v1/jobs/fine-tune", {"dataset_id": "x", "output_model": "y", "epochs": True}, "epochs"),
    ("/v1/jobs/sweep", {"base": {**BASE, "batch_size": True}, "space": {"lr": {"uniform": [0.1, 0.2]}}},
     "base.batch_size"),
    ("/v1/jobs/activation-maximization", {"target": {"class": True}}, "target.class"),
    ("/v1/jobs/activation-maximization", {"target": {"classes": [1, False]}}, "target.classes.1"),
    ("/v1/jobs/explain-dataset", {"dataset_id": "x", "batch_size": True}, "batch_size"),
])
def test_true_or_false_for_a_number_is_refused_not_read_as_one_or_zero(client, path, body, field):
    """pydantic reads true as 1: `"lr": true` trained at 1.0, `{"class": true}` maximized class 1."""
    refused = client.post(path, json=body)
    assert refused.status_code == 422, refused.text
    assert {"field": field, "message": "Input should be a number, not true or false"} in refused.json()["errors"] or \
        (field == "lr" and "not true or false, or 'auto'" in refused.text), refused.json()


def test_explain_datasets_method_keeps_its_bound_now_that_it_may_be_null(client):
    """`str | None` lost the 64-character bound (only numbers kept theirs in a union): a long name
    passed validation and was refused later, as another kind of problem."""
    refused = client.post("/v1/jobs/explain-dataset", json={"dataset_id": "x", "method": "m" * 65})
    assert refused.status_code == 422 and refused.json()["type"].endswith("validation-error"), refused.text
    assert refused.json()["errors"][0]["field"] == "method"
    schema = client.get("/openapi.json").json()["components"]["schemas"]["ExplainDatasetRequest"]
    assert {"type": "string", "maxLength": 64} in schema["properties"]["method"]["anyOf"]
