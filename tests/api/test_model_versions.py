"""Versions of an uploaded model: listed, pinned as the default (a rollback), deleted; a plain
name means the pinned version, else the newest that loads; loaded models are evicted least
recently used first."""

from __future__ import annotations

import shutil
import time

import pytest
import torch
import torchvision
from fastapi.testclient import TestClient
from safetensors.torch import save

from core.models import versions
from service import default_model
from service.app import create_app
from service.dependencies import MODEL_LOAD_COST
from service.settings import Settings
from support import chelsea, encode, upload


def resnet_weights(seed: int) -> bytes:
    torch.manual_seed(seed)
    network = torchvision.models.resnet18(num_classes=3)
    return save({key: value.contiguous() for key, value in network.state_dict().items()})


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("versions"), max_loaded_models=3)
    with TestClient(base_url="http://localhost", app=create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client
    shutil.rmtree(settings.data_dir)  # the uploaded models: gigabytes of the host's disk otherwise kept to the end


def publish(client, name: str, seed: int) -> int:
    response = client.post("/v1/models", data={"name": name, "architecture": "resnet18", "input_size": 64},
                           files={"weights": ("w.safetensors", resnet_weights(seed))})
    assert response.status_code == 201, response.text
    return response.json()["version"]


def served_version(client, ref: str) -> int:
    response = client.post(f"/v1/models/{ref}/predict", files=[upload(encode(chelsea()))])
    assert response.status_code == 200, response.text
    return response.json()["model"]["version"]


def test_versions_can_be_listed_pinned_and_deleted(client):
    assert [publish(client, "pets", seed) for seed in (1, 2, 3)] == [1, 2, 3]
    listed = client.get("/v1/models/pets/versions").json()
    assert [v["version"] for v in listed["data"]] == [1, 2, 3] and listed["default"] == 3 and listed["pinned"] is None
    assert served_version(client, "pets") == 3

    pinned = client.put("/v1/models/pets/default", json={"version": 1})
    assert pinned.status_code == 200 and pinned.json() == {"id": "pets", "version": 1}
    assert served_version(client, "pets") == 1 and served_version(client, "pets@2") == 2
    assert client.get("/v1/models/pets").json()["version"] == 1
    assert client.put("/v1/models/pets/default", json={"version": 9}).status_code == 422
    assert client.put("/v1/models/pets/default", json={"version": 0}).status_code == 422
    refused = client.put("/v1/models/pets/default", json={"version": True})  # was read as version 1
    assert refused.status_code == 422 and "not true or false" in refused.text, refused.text
    unpinned = client.delete("/v1/models/pets/default")
    assert unpinned.status_code == 200 and unpinned.json() == {"id": "pets", "version": 3}
    assert served_version(client, "pets") == 3 and client.get("/v1/models/pets/versions").json()["pinned"] is None
    assert client.delete("/v1/models/nothing/default").status_code == 404
    assert client.delete("/v1/models/efficientnet_lite0/default").status_code == 409
    builtin = {m["id"]: m["builtin"] for m in client.get("/v1/models").json()["data"]}
    assert builtin["efficientnet_lite0"] is True and builtin["pets"] is False
    assert client.put("/v1/models/pets/default", json={"version": 1}).status_code == 200

    assert client.delete("/v1/models/pets@1").status_code == 204  # the pinned one: the pin goes with it
    listed = client.get("/v1/models/pets/versions").json()
    assert [v["version"] for v in listed["data"]] == [2, 3] and listed["pinned"] is None
    assert served_version(client, "pets") == 3
    assert client.delete("/v1/models/pets@1").status_code == 404
    assert client.delete("/v1/models/pets@3").status_code == 204
    assert publish(client, "pets", 4) == 4  # a deleted number is never given again
    assert client.post("/v1/models/pets@1/predict", files=[upload(encode(chelsea()))]).status_code == 404
    assert client.put("/v1/models/pets/default", json={"version": 4}).status_code == 200
    assert client.delete("/v1/models/pets@").status_code == 404  # a version left empty is no whole model
    assert client.delete("/v1/models/pets").status_code == 204  # the model: every version, and its pin
    assert not (client.app.state.registry.storage.models / "pets" / "default").exists()
    assert client.get("/v1/models/pets/versions").status_code == 404
    assert "pets" not in {m["id"] for m in client.get("/v1/models").json()["data"]}
    assert client.post("/v1/models/pets/predict", files=[upload(encode(chelsea()))]).status_code == 404
    assert client.delete("/v1/models/pets").status_code == 404
    assert client.delete("/v1/models/efficientnet_lite0").status_code == 409
    assert publish(client, "pets", 5) == 5  # numbers are not given again, even after the whole model went


def test_a_plain_name_means_the_newest_version_that_loads(client):
    assert publish(client, "fragile", 1) == 1
    assert publish(client, "fragile", 2) == 2
    broken = versions.version_dir(client.app.state.registry.storage.models, "fragile", 2) / versions.ONNX
    broken.write_bytes(b"corrupted on disk")
    assert served_version(client, "fragile") == 1
    assert client.post("/v1/models/fragile@2/predict", files=[upload(encode(chelsea()))]).status_code == 503
    states = {v["version"]: v["state"] for v in client.get("/v1/models/fragile/versions").json()["data"]}
    assert states == {1: "ready", 2: "failed"}


def test_loaded_models_beyond_the_limit_are_evicted_least_recently_used_first(client):
    """The default model stays loaded (it is resident); two slots are left for the others."""
    registry = client.app.state.registry
    for name, seed in (("first", 1), ("second", 2), ("third", 3)):
        publish(client, name, seed)
    served_version(client, "first")
    served_version(client, "second")
    served_version(client, "first")  # now `second` is the least recently used
    served_version(client, "third")
    assert set(registry._loaded) == {"efficientnet_lite0@1", "first@1", "third@1"}
    assert served_version(client, "second") == 1  # loads again on demand, in place of `first`
    assert set(registry._loaded) == {"efficientnet_lite0@1", "third@1", "second@1"}
    assert client.get("/readyz").status_code == 200


def test_one_loaded_model_besides_the_resident_default_still_serves(tmp_path):
    settings = Settings(data_dir=tmp_path, max_loaded_models=1)
    with TestClient(base_url="http://localhost", app=create_app(settings), raise_server_exceptions=False) as client:
        publish(client, "solo", 1)
        assert served_version(client, "solo") == 1
        assert served_version(client, "solo") == 1
        assert client.get("/readyz").status_code == 200


def test_only_a_load_is_charged_to_its_clients_compute(tmp_path):
    """A model that is loaded costs nothing to ask for again, however it is named, nor does one
    whose load failed (503); a load costs MODEL_LOAD_COST forward passes, so cycling through more
    versions than stay loaded (here one beside the resident default) runs out."""
    settings = Settings(data_dir=tmp_path, max_loaded_models=2, compute_per_second=1,
                        compute_burst=3 * MODEL_LOAD_COST)
    with TestClient(base_url="http://localhost", app=create_app(settings), raise_server_exceptions=False) as client:
        assert [publish(client, "tight", seed) for seed in (1, 2, 3)] == [1, 2, 3]
        broken = versions.version_dir(client.app.state.registry.storage.models, "tight", 1) / versions.ONNX
        broken.write_bytes(b"corrupted on disk")
        failed = [client.get("/v1/models/tight@1").status_code for _ in range(4)]
        assert failed == [503] * 4, failed  # the first load charged, the failed model not
        assert [served_version(client, ref) for ref in ("tight", "tight@3") * 5] == [3] * 10  # one load
        statuses = [client.get(f"/v1/models/tight@{version}").status_code for version in (2, 3)]
        assert statuses == [200, 429], statuses  # the third load, then none left
        assert client.get("/v1/models/tight@2").status_code == 200  # loaded: nothing to charge


def test_the_default_model_is_ready_under_a_version_and_is_loaded_again_when_its_name_means_another(
        tmp_path, monkeypatch):
    """`efficientnet_lite0@1` as the default was never ready (readiness looked it up among names);
    a new version of the default model's name stayed unloaded, and the service not ready, until a
    request for it came, which a balancer sends to no instance that is not ready."""
    monkeypatch.setattr(default_model, "CHECK_SECONDS", 0.1)
    with TestClient(base_url="http://localhost", app=create_app(Settings(data_dir=tmp_path / "a",
                    default_model="efficientnet_lite0@1"))) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["default_model"] == "efficientnet_lite0@1", ready.text
    data = tmp_path / "b"
    with TestClient(base_url="http://localhost", app=create_app(Settings(data_dir=data))) as client:
        publish(client, "tiny", 1)
    with TestClient(base_url="http://localhost", app=create_app(Settings(data_dir=data, default_model="tiny"))) \
            as client:
        assert client.get("/readyz").json()["models"]["tiny"] == {"state": "ready", "version": 1}
        publish(client, "tiny", 2)
        deadline = time.monotonic() + 30
        while (ready := client.get("/readyz")).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.status_code == 200 and ready.json()["models"]["tiny"] == {"state": "ready", "version": 2}
        assert set(client.app.state.registry._loaded) >= {"tiny@1", "tiny@2"}  # both resident, no request sent


def test_a_job_runs_the_version_its_model_name_meant_when_it_was_checked(client):
    """A plain name was kept in the job and looked up again when a worker took it: a version
    published meanwhile (a larger input size, say) ran unchecked by the job's memory and cost
    limits. The job now names the version it was checked against."""
    first = publish(client, "pinned-by-job", seed=4)
    queued = client.post("/v1/jobs/activation-maximization",
                         json={"model": "pinned-by-job", "target": {"class": 1}, "steps": 5, "size": 64})
    assert queued.status_code == 202, queued.text
    second = publish(client, "pinned-by-job", seed=5)
    assert second == first + 1 and served_version(client, "pinned-by-job") == second
    job = client.get(queued.headers["Location"]).json()  # no worker here: still queued
    assert job["state"] == "queued" and job["params"]["model"] == f"pinned-by-job@{first}", job["params"]
    built_in = client.post("/v1/jobs/activation-maximization",
                           json={"model": "efficientnet_lite0", "target": {"class": 1}, "steps": 5, "size": 64})
    assert built_in.json()["params"]["model"] == "efficientnet_lite0@1"


def test_a_version_that_a_queued_job_reads_is_not_deleted(client):
    """Deleted under a queued job, it failed the job (`unknown-model`) once a worker took it, where
    a data set is kept. This app's jobs stay queued: no worker runs here."""
    publish(client, "in-use", 1)
    publish(client, "in-use", 2)
    job = client.post("/v1/jobs/activation-maximization",
                      json={"model": "in-use@1", "target": {"classes": [0]}, "size": 64, "steps": 1})
    assert job.status_code == 202, job.text
    for ref in ("in-use@1", "in-use"):
        refused = client.delete(f"/v1/models/{ref}")
        assert refused.status_code == 409 and job.json()["id"] in refused.json()["detail"], refused.text
    assert client.delete("/v1/models/in-use@2").status_code == 204  # one that no job reads
    assert client.delete(f"/v1/jobs/{job.json()['id']}").json()["state"] == "cancelled"
    assert client.delete("/v1/models/in-use").status_code == 204


def test_a_version_sent_without_labels_keeps_the_newest_earlier_versions_where_the_classes_match(client):
    """A new-user review uploaded version 2 without its labels file and lost version 1's names."""
    def labels_of(ref: str) -> list[str]:
        return client.get(f"/v1/models/{ref}").json()["labels"]

    names = "rust\ndent\nscratch\n"
    response = client.post("/v1/models", data={"name": "labelled", "architecture": "resnet18", "input_size": 64},
                           files={"weights": ("w.safetensors", resnet_weights(0)), "labels": ("l.txt", names)})
    assert response.status_code == 201, response.text
    assert publish(client, "labelled", 1) == 2
    assert labels_of("labelled@2") == ["rust", "dent", "scratch"]
    torch.manual_seed(2)
    wider = torchvision.models.resnet18(num_classes=4)
    response = client.post("/v1/models", data={"name": "labelled", "architecture": "resnet18", "input_size": 64},
                           files={"weights": ("w.safetensors", save(wider.state_dict()))})
    assert response.status_code == 201 and labels_of("labelled@3") == ["0", "1", "2", "3"], response.text
    response = client.post("/v1/models", data={"name": "labelled", "architecture": "resnet18", "input_size": 64},
                           files={"weights": ("w.safetensors", resnet_weights(3)), "labels": ("l.txt", "a\nb\nc\n")})
    assert response.status_code == 201 and labels_of("labelled@4") == ["a", "b", "c"], response.text
