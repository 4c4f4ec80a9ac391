"""GAZER_DECODE_ON_DEVICE: predict decodes and preprocesses JPEGs where the model runs (here the
CPU, through torchvision; nvJPEG on a GPU: tests/gpu) and answers as the served CPU path does;
other uploads, and JPEGs the decoder refuses, take the CPU path and its answers."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from support import chelsea, encode, foolbox_imagenet_photos, upload
from tests.api.test_metrics import scrape, value
from tests.conftest import MODEL

PREDICT = f"/v1/models/{MODEL}/predict"


@pytest.fixture(scope="module")
def on_device_client(app_settings):
    settings = app_settings(decode_on_device=True)
    with TestClient(base_url="http://localhost", app=create_app(settings), raise_server_exceptions=False) as client:
        yield client


def predict(client: TestClient, blobs: list[bytes], **fields) -> list[list[dict]]:
    response = client.post(PREDICT, files=[upload(blob) for blob in blobs], data=fields)
    assert response.status_code == 200, response.text
    return [result["predictions"] for result in response.json()["results"]]


def stage_count(client: TestClient, stage: str) -> float:
    return value(scrape(client), "gazer_inference_seconds_count", model=MODEL, stage=stage)


@pytest.mark.parametrize("resize", ["crop", "stretch"])
def test_predictions_match_the_cpu_path(client, on_device_client, resize):
    photos = [path.read_bytes() for path, _ in foolbox_imagenet_photos()[:6]] + [encode(chelsea().resize((300, 451)))]
    before = stage_count(on_device_client, "device_preprocess")
    ours, theirs = predict(on_device_client, photos, resize=resize), predict(client, photos, resize=resize)
    assert stage_count(on_device_client, "device_preprocess") == before + 1
    for mine, served in zip(ours, theirs):
        assert mine[0]["index"] == served[0]["index"]
        assert abs(mine[0]["probability"] - served[0]["probability"]) < 0.01


def test_other_uploads_take_the_cpu_path(client, on_device_client):
    png, photo = encode(chelsea(), "PNG"), encode(chelsea())
    before = stage_count(on_device_client, "device_preprocess")
    assert predict(on_device_client, [png, photo])[0][0]["index"] == predict(client, [png])[0][0]["index"]
    damaged = on_device_client.post(PREDICT, files=[upload(photo[: len(photo) // 2])])
    assert damaged.status_code == client.post(PREDICT, files=[upload(photo[: len(photo) // 2])]).status_code == 422
    assert "truncated or corrupt" in damaged.json()["detail"]
    assert stage_count(on_device_client, "device_preprocess") == before
