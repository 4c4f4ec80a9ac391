"""Real ImageNet weights through the upload path: the built-in EfficientNet-Lite0 weights, renamed
to timm's `tf_efficientnet_lite0` and uploaded as safetensors with the same preprocessing, rank
the 20 ImageNet photos of the foolbox wheel with the same top-1 as the built-in model."""

from __future__ import annotations

import pytest
import timm
from fastapi.testclient import TestClient
from safetensors.torch import save

from core.models.catalog import imagenet_labels, load_builtin
from service.app import create_app
from service.settings import Settings
from support import foolbox_imagenet_photos, upload


def lite0_weights_for_timm() -> dict:
    """Both networks register the same layers in the same order (stem, blocks, head conv,
    classifier): the keys map one to one, and each pair must have the same shape."""
    _, builtin = load_builtin("efficientnet_lite0")
    ours = list(builtin.state_dict().items())
    theirs = list(timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict().items())
    assert len(ours) == len(theirs)
    mapped = {}
    for (our_key, value), (their_key, expected) in zip(ours, theirs):
        assert value.shape == expected.shape, (our_key, their_key)
        mapped[their_key] = value.contiguous()
    return mapped


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with TestClient(base_url="http://localhost", app=create_app(Settings(data_dir=tmp_path_factory.mktemp("real-weights"))),
                    raise_server_exceptions=False) as test_client:
        yield test_client


def test_builtin_lite0_weights_uploaded_for_timm_give_the_same_top1(client):
    response = client.post("/v1/models", data={
        "name": "lite0-timm", "architecture": "timm:tf_efficientnet_lite0", "input_size": 224, "resize_size": 256,
        "interpolation": "bicubic", "mean": [127 / 255] * 3, "std": [128 / 255] * 3,
    }, files={"weights": ("lite0.safetensors", save(lite0_weights_for_timm())),
              "labels": ("labels.txt", "\n".join(imagenet_labels()).encode())})
    assert response.status_code == 201, response.text
    photos = foolbox_imagenet_photos()
    files = [upload(path.read_bytes(), path.name) for path, _ in photos]
    top1 = {}
    for model in ("efficientnet_lite0", "lite0-timm"):
        served = client.post(f"/v1/models/{model}/predict", files=files, data={"top_k": 1})
        assert served.status_code == 200, served.text
        top1[model] = [result["predictions"][0]["index"] for result in served.json()["results"]]
    truth = [label for _, label in photos]
    print(f"top-1 correct: built-in {sum(a == b for a, b in zip(top1['efficientnet_lite0'], truth))}/20, "
          f"uploaded {sum(a == b for a, b in zip(top1['lite0-timm'], truth))}/20")
    assert top1["lite0-timm"] == top1["efficientnet_lite0"]
    assert client.get("/v1/models/lite0-timm").json()["default_layer"] == "bn2"
