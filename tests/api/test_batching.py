"""Concurrent requests for one model run as one batch, with the same answers as alone; a full
model queue answers 503 with Retry-After at once (to requests with a key, where keys are
required); the spellings of a version share its queue."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient

from core import pipeline
from core.errors import ServiceBusy
from core.explain import METHODS
from service.admission import ModelQueues
from service.app import create_app
from service.rate_limits import TooManyRequests
from support import foolbox_imagenet_photos, upload
from tests.conftest import MODEL
from tests.held_method import GRADIENT_LAYER, HeldGradCAM

PREDICT, EXPLAIN = f"/v1/models/{MODEL}/predict", f"/v1/models/{MODEL}/explain"
QUEUE = 4  # requests in flight per model


@pytest.fixture(scope="module")
def small_queue_client(app_settings):
    settings = app_settings(max_queued_per_model=QUEUE)
    with TestClient(base_url="http://localhost", app=create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return [path.read_bytes() for path, _ in foolbox_imagenet_photos()[:QUEUE]]


class HeldRuns:
    """The model's ONNX Runtime runs, recorded (images per run); all are held until released."""

    def __init__(self, model, monkeypatch) -> None:
        self.sizes: list[int] = []
        self.release = threading.Event()
        run = model.predictor.run_batches

        def held(outputs, batches):
            self.sizes.append(sum(len(batch) for batch in batches))
            assert self.release.wait(60), "the test never released the held run"
            return run(outputs, batches)

        monkeypatch.setattr(model.predictor, "run_batches", held)

    def wait_started(self, runs: int) -> None:
        deadline = time.monotonic() + 60
        while len(self.sizes) < runs:
            assert time.monotonic() < deadline, f"{len(self.sizes)} runs started, not {runs}"
            time.sleep(0.01)


def test_concurrent_predictions_run_as_one_batch_with_the_answers_they_get_alone(small_queue_client, photos,
                                                                                 monkeypatch):
    client = small_queue_client
    alone = [client.post(PREDICT, files=[upload(photo)]).json()["results"][0] for photo in photos]
    model = client.app.state.registry.get(MODEL)
    runners = pipeline.onnx_runs(model).runners  # two on a CPU of several cores
    assert runners + 2 <= len(photos)
    held = HeldRuns(model, monkeypatch)
    with ThreadPoolExecutor(len(photos)) as pool:
        first = []
        for photo in photos[:runners]:  # each runner holds one request
            first.append(pool.submit(client.post, PREDICT, files=[upload(photo)]))
            held.wait_started(len(first))
        rest = [pool.submit(client.post, PREDICT, files=[upload(photo)]) for photo in photos[runners:runners + 2]]
        while pipeline.onnx_runs(model).waiting() < 2:
            threading.Event().wait(0.01)
        held.release.set()
        together = [future.result(60) for future in [*first, *rest]]
    assert held.sizes == [1] * runners + [2]
    assert [response.json()["results"][0] for response in together] == alone[:runners + 2]  # exactly the same


def test_a_full_model_queue_answers_503_with_retry_after_at_once(small_queue_client, photos, monkeypatch):
    client = small_queue_client
    held = HeldRuns(client.app.state.registry.get(MODEL), monkeypatch)
    with ThreadPoolExecutor(QUEUE) as pool:
        admitted = [pool.submit(client.post, PREDICT, files=[upload(photo)]) for photo in photos]
        held.wait_started(1)
        while sum(client.app.state.model_queues.in_flight.values()) < QUEUE:
            threading.Event().wait(0.01)
        refused = client.post(PREDICT, files=[upload(photos[0])])
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["type"] == "/problems/busy" and "GAZER_MAX_QUEUED_PER_MODEL" in refused.json()["detail"]
        held.release.set()
        assert [future.result(60).status_code for future in admitted] == [200] * QUEUE
    assert client.post(PREDICT, files=[upload(photos[0])]).status_code == 200


def test_concurrent_gradcams_run_as_one_batch_each_with_its_own_target(small_queue_client, photos, monkeypatch):
    client = small_queue_client
    requests = [(photos[0], {}), (photos[1], {"target": "281"}), (photos[2], {})]

    def explain(photo, fields):
        fields = {"method": "gradcam", "layer": GRADIENT_LAYER, "outputs": "map", **fields}
        return client.post(EXPLAIN, files=[upload(photo)], data=fields)

    alone = [explain(photo, fields).json()["results"][0]["explanation"] for photo, fields in requests]
    held = HeldGradCAM()
    monkeypatch.setitem(METHODS, "gradcam", held)
    model = client.app.state.registry.get(MODEL)
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(explain, *requests[0])
        assert held.started.wait(60)
        rest = [pool.submit(explain, *request) for request in requests[1:]]
        while pipeline.torch_runs(model).waiting() < 2:
            threading.Event().wait(0.01)
        held.release.set()
        together = [future.result(60).json()["results"][0]["explanation"] for future in [first, *rest]]
    assert held.batches == [1, 2]
    for by_itself, batched in zip(alone, together):
        assert batched["target"]["index"] == by_itself["target"]["index"]
        assert batched["target"]["probability"] == pytest.approx(by_itself["target"]["probability"], abs=1e-6)
        assert np.abs(np.asarray(batched["map"]) - np.asarray(by_itself["map"])).max() < 1e-3
    assert together[1]["target"]["index"] == 281


def test_a_long_explanation_does_not_hold_the_model_for_a_short_one(small_queue_client, photos):
    """Integrated gradients at 128 steps runs in chunks; a Grad-CAM sent meanwhile runs between
    two of them and is answered long before the integrated gradients are."""
    client = small_queue_client
    finished: dict[str, float] = {}

    def explain(name, fields):
        response = client.post(EXPLAIN, files=[upload(photos[0])], data={**fields, "outputs": "map"})
        finished[name] = time.perf_counter()
        return response

    model = client.app.state.registry.get(MODEL)
    with ThreadPoolExecutor(2) as pool:
        long = pool.submit(explain, "long", {"method": "integrated_gradients", "steps": 128})
        while not pipeline.torch_runs(model).running_long() and not long.done():
            time.sleep(0.01)
        assert not long.done(), long.result().text
        short = pool.submit(explain, "short", {"method": "gradcam", "layer": GRADIENT_LAYER})
        assert short.result(120).status_code == 200 and long.result(300).status_code == 200
    assert finished["short"] < finished["long"]


def test_spellings_of_one_version_share_its_queue():
    queues = ModelQueues(limit=2, per_client=2)
    with queues.admitted("m", "m@1", "a"), queues.admitted("m@01", "m@1", "a"):  # `m` means version 1 here
        assert queues.full("m") and queues.full("m@01") and queues.full("m@1")
        with pytest.raises(ServiceBusy):
            with queues.admitted("m@1", "m@1", "b"):
                pass
        assert not queues.full("m@2") and not queues.full("other")
        queues.versions["m"] = ("m@1", time.monotonic() - 2)  # not resolved lately: `m` may mean another version now
        assert not queues.full("m") and queues.full("m@1")
    assert not queues.in_flight and not queues.full("m")


def test_one_client_holds_at_most_its_share_of_a_queue():
    queues = ModelQueues(limit=3, per_client=2)
    with queues.admitted("m", "m@1", "a"), queues.admitted("m", "m@1", "a"):
        with pytest.raises(TooManyRequests) as refused:
            with queues.admitted("m@1", "m@1", "a"):
                pass
        assert refused.value.status == 429 and refused.value.extra["headers"] == {"Retry-After": "1"}
        with queues.admitted("other", "other@1", "a"), queues.admitted("m", "m@1", "b"):  # another model, client
            assert queues.full("m")
    assert not queues.in_flight and not queues.of_client


def test_a_plain_name_and_its_version_share_one_queue_over_http(small_queue_client, photos):
    """While a version's queue is full, its plain name, the version and another spelling of it
    are refused with Retry-After; once the route has resolved the plain name, before its
    upload is read (a request without a file would otherwise get the route's 422)."""
    client, queues = small_queue_client, small_queue_client.app.state.model_queues
    version = client.app.state.registry.get(MODEL).spec.ref
    queues.in_flight[version] = queues.limit  # as if that many were in flight
    try:
        for spelling in (version.replace("@", "@0"), MODEL):  # resolved by the route, and refused there
            refused = client.post(f"/v1/models/{spelling}/predict", files=[upload(photos[0])])
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "1", spelling
        for spelling in (MODEL, version):  # refused before the form is read
            refused = client.post(f"/v1/models/{spelling}/predict")
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "1", spelling
    finally:
        del queues.in_flight[version]


def test_a_version_of_thousands_of_digits_is_a_clear_4xx(small_queue_client, photos):
    response = small_queue_client.post(f"/v1/models/{MODEL}@{'9' * 5000}/predict", files=[upload(photos[0])])
    assert response.status_code == 404 and "up to 9 digits" in response.json()["detail"]


def test_a_large_gradient_request_runs_in_parts_of_at_most_the_largest_batch(app_settings, photos, monkeypatch):
    """Each image's forward and backward holds tens of MB: a request of many images is split
    so that no torch run takes more than GAZER_MAX_BATCH (fewer for large inputs)."""
    settings = app_settings(max_batch=2)
    with TestClient(base_url="http://localhost", app=create_app(settings)) as client:
        fields = {"method": "saliency", "outputs": "map"}
        alone = [client.post(EXPLAIN, files=[upload(photo)], data=fields).json()["results"][0]["explanation"]["map"]
                 for photo in photos[:3]]
        model = client.app.state.registry.get(MODEL)
        assert pipeline.torch_images_per_run(model) == 2
        sizes, run = [], pipeline._torch_batch
        monkeypatch.setattr(pipeline, "_torch_batch", lambda model, key, payloads: (
            sizes.append(sum(len(inputs) for inputs, _ in payloads)), run(model, key, payloads))[1])
        response = client.post(EXPLAIN, files=[upload(photo) for photo in [*photos[:3], *photos[:2]]], data=fields)
        assert response.status_code == 200, response.text
        assert sizes == [2, 2, 1]
        together = [result["explanation"]["map"] for result in response.json()["results"]]
        for got, expected in zip(together, [*alone, *alone[:2]]):
            np.testing.assert_allclose(got, expected, atol=1e-3)


def test_a_torch_run_takes_fewer_images_the_larger_the_input(small_queue_client):
    model = small_queue_client.app.state.registry.get(MODEL)
    assert model.spec.input_size == 224 and pipeline.torch_images_per_run(model) == 16
