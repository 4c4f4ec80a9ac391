"""Fine-tuning a model the user uploaded, for each classic CNN family and one timm model, on
real Redis and a real worker; the new version is served when the job ends. Also: an ONNX-only
model cannot be fine-tuned, and model names in job bodies cannot leave the models folder."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torchvision
from safetensors.torch import save

from support import SHAPE_CLASSES, encode, shape_image, shapes_archive, upload
from tests.integration.conftest import wait_for

# architecture -> fine-tuning input size (Inception v3 needs a larger one for its last map, VGG a
# 7x7 map for its adaptive pooling to export to ONNX)
FAMILIES = {"resnet18": 64, "vgg11_bn": 224, "mobilenet_v3_large": 64, "inception_v3": 128,
            "densenet121": 64, "efficientnet_b0": 64, "convnext_tiny": 64, "timm:resnet18": 64}


def uploaded_weights(architecture: str) -> bytes:
    torch.manual_seed(0)
    if architecture.startswith("timm:"):
        network = timm.create_model(architecture[5:], pretrained=False, num_classes=5)
    elif architecture == "inception_v3":
        network = torchvision.models.inception_v3(weights=None, num_classes=5, aux_logits=False, init_weights=False)
    else:
        network = torchvision.models.get_model(architecture, weights=None, num_classes=5)
    return save({key: value.contiguous() for key, value in network.state_dict().items()})


@pytest.fixture(scope="module")
def shapes(api):
    created = api.post("/v1/datasets", files=[upload(shapes_archive(per_class=4, size=64), "shapes.zip",
                                                     "application/zip")])
    assert created.status_code == 201, created.text
    return created.json()["id"]


@pytest.mark.parametrize("architecture", sorted(FAMILIES))
def test_an_uploaded_model_fine_tunes_and_the_result_is_served(api, workers, shapes, architecture):
    workers()
    name = "base-" + architecture.replace(":", "-")
    size = FAMILIES[architecture]
    uploaded = api.post("/v1/models", data={"name": name, "architecture": architecture, "input_size": size},
                        files={"weights": ("w.safetensors", uploaded_weights(architecture))})
    assert uploaded.status_code == 201, uploaded.text
    job = api.post("/v1/jobs/fine-tune", json={
        "base_model": name, "dataset_id": shapes, "output_model": f"tuned-{name}", "strategy": "gradual_unfreeze",
        "epochs": 2, "batch_size": 4, "input_size": size, "head": {"dropout": 0.1}, "early_stopping_patience": 2})
    assert job.status_code == 202, job.text
    done = wait_for(api, job.json()["id"], ("succeeded", "failed"), timeout=600)
    assert done["state"] == "succeeded", done
    described = api.get(f"/v1/models/tuned-{name}").json()
    assert described["architecture"] == architecture and described["num_classes"] == len(SHAPE_CLASSES)
    photo = [upload(encode(shape_image("disc", np.random.default_rng(0)), "PNG"), "c.png", "image/png")]
    predicted = api.post(f"/v1/models/tuned-{name}/predict", files=photo)
    assert predicted.status_code == 200, predicted.text
    assert predicted.json()["results"][0]["predictions"][0]["label"] in SHAPE_CLASSES
    explained = api.post(f"/v1/models/tuned-{name}/explain", files=photo, data={"method": "gradcam"})
    assert explained.status_code == 200, explained.text


@pytest.mark.parametrize("field, body", [
    ("base_model", {"base_model": "../x", "output_model": "y"}),
    ("base_model", {"base_model": "/proc", "output_model": "y"}),
    ("base_model", {"base_model": "a/b", "output_model": "y"}),
    ("output_model", {"output_model": "../y"}),
])
def test_model_names_in_fine_tune_bodies_are_422(api, shapes, field, body):
    response = api.post("/v1/jobs/fine-tune", json={"dataset_id": shapes, **body})
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] in (field, "model")


@pytest.mark.parametrize("model", ["../x", "/proc", "a/b", ".."])
def test_model_names_in_activation_maximization_bodies_are_422(api, model):
    response = api.post("/v1/jobs/activation-maximization", json={"model": model, "target": {"class": 1}})
    assert response.status_code == 422, response.text


def test_attention_modules_go_into_an_uploaded_model_and_show_their_maps(api, workers, shapes):
    workers()
    uploaded = api.post("/v1/models", data={"name": "base-attended", "architecture": "resnet18", "input_size": 64},
                        files={"weights": ("w.safetensors", uploaded_weights("resnet18"))})
    assert uploaded.status_code == 201, uploaded.text
    job = api.post("/v1/jobs/fine-tune", json={
        "base_model": "base-attended", "dataset_id": shapes, "output_model": "attended", "strategy": "fine_tune",
        "unfreeze_blocks": 2, "epochs": 2, "batch_size": 4, "attention": "cbam", "attention_stages": 2})
    assert job.status_code == 202, job.text
    done = wait_for(api, job.json()["id"], ("succeeded", "failed"), timeout=600)
    assert done["state"] == "succeeded", done
    described = api.get("/v1/models/attended").json()
    assert described["attention"] == ["attention.after_layer4_1", "attention.after_layer3_1"]
    assert "attention" in described["methods"]
    photo = [upload(encode(shape_image("disc", np.random.default_rng(1)), "PNG"), "d.png", "image/png")]
    for layer in ("attention.after_layer4_1.spatial.gate", "attention.after_layer3_1.spatial.gate"):
        shown = api.post("/v1/models/attended/explain", files=photo,
                         data={"method": "attention", "layer": layer, "outputs": "map"})
        assert shown.status_code == 200, shown.text
        assert np.asarray(shown.json()["results"][0]["explanation"]["map"]).shape in ((2, 2), (4, 4))
