"""A sweep request is checked before anything is queued: its space against the fine-tune
fields (422 naming `space.NAME`), its bounds, its base fine-tune's references."""

from __future__ import annotations

import pytest

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
    assert client.get("/v1/jobs", params={"parent": "0" * 32}).json() == {"data": [], "count": 0}
