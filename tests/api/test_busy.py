"""Explanations run in a bounded number of slots; a request that finds them all busy gets 503
with Retry-After at once, without being charged compute, and predictions are not held up behind them."""

from __future__ import annotations

import threading
import time


from fastapi.testclient import TestClient

from core.explain import METHODS
from service.app import create_app
from support import chelsea, encode, upload
from tests.api.test_api_keys import post_lazily
from tests.conftest import MODEL
from tests.held_method import GRADIENT_LAYER, HeldGradCAM

EXPLAIN = f"/v1/models/{MODEL}/explain"


def test_a_request_that_finds_every_slot_busy_gets_503(one_slot_client, monkeypatch):
    held = HeldGradCAM()
    monkeypatch.setitem(METHODS, "gradcam", held)
    photo = [upload(encode(chelsea()))]
    slow: list = []
    running = threading.Thread(target=lambda: slow.append(
        one_slot_client.post(EXPLAIN, files=photo,
                             data={"method": "gradcam", "layer": GRADIENT_LAYER, "outputs": "map"})))
    running.start()
    try:
        assert held.started.wait(timeout=60), "the first explanation never started"

        [bucket] = one_slot_client.app.state.compute_limiter._buckets.values()  # the one client's compute
        charged = bucket.updated  # each charge stamps it
        started = time.perf_counter()
        busy = one_slot_client.post(EXPLAIN, files=photo, data={"method": "saliency"})
        assert bucket.updated == charged, "a refused explanation was charged compute"
        assert busy.status_code == 503 and busy.headers["content-type"] == "application/problem+json"
        assert busy.json()["type"] == "/problems/busy" and "retry later" in busy.json()["detail"]
        assert busy.headers["retry-after"] == "1"
        assert time.perf_counter() - started < 5, "a full server answers at once, not after a wait"

        predicted = one_slot_client.post(f"/v1/models/{MODEL}/predict", files=photo)
        assert predicted.status_code == 200 and not slow, "predict waited for the explanation"
    finally:
        held.release.set()
        running.join(timeout=120)
    assert slow[0].status_code == 200
    assert one_slot_client.post(EXPLAIN, files=photo, data={"method": "saliency"}).status_code == 200


def test_explanations_hold_their_decoded_pixels_against_a_budget(app_settings, monkeypatch):
    """Their images stay decoded until their pictures are drawn: a few small files declaring
    gigapixels, sent at once, would otherwise add up past the machine's memory."""
    held = HeldGradCAM()
    monkeypatch.setitem(METHODS, "gradcam", held)
    photo = chelsea()  # 451 x 300: 135 300 pixels
    settings = app_settings(max_explained_pixels=200_000, max_request_pixels=250_000)
    with TestClient(base_url="http://localhost", app=create_app(settings), raise_server_exceptions=False) as client:
        slow: list = []
        running = threading.Thread(target=lambda: slow.append(
            client.post(EXPLAIN, files=[upload(encode(photo))],
                        data={"method": "gradcam", "layer": GRADIENT_LAYER, "outputs": "map"})))
        running.start()
        try:
            assert held.started.wait(timeout=60), "the first explanation never started"
            busy = client.post(EXPLAIN, files=[upload(encode(photo))], data={"method": "saliency", "outputs": "map"})
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1", busy.text
            assert "GAZER_MAX_EXPLAINED_PIXELS" in busy.json()["detail"]
            # one over its own limit is told so (413), not to retry what can never pass
            over = client.post(EXPLAIN, files=[upload(encode(photo))] * 2, data={"method": "saliency"})
            assert over.status_code == 413 and "250000" in over.json()["detail"], over.text
        finally:
            held.release.set()
            running.join(timeout=120)
        assert slow[0].status_code == 200
        assert client.app.state.explained_pixels.held == 0
        assert client.app.state.explained_pixels.per_client == 100_000  # a client's share: half, by default
        # alone, a request over the budget (but within its own limit) is served: it holds the whole budget
        wide = encode(photo.resize((600, 350)))  # 210 000 pixels
        alone = client.post(EXPLAIN, files=[upload(wide)], data={"method": "saliency", "outputs": "map"})
        assert alone.status_code == 200, alone.text


def test_a_client_at_its_share_is_refused_before_its_upload_is_read(app_settings, monkeypatch):
    """The 429 for a client's share of a model's queue or of the explanation slots came once its
    whole upload was in: 20 uploads of 8 MB from one key were taken in at once, 8 to be refused."""
    held = HeldGradCAM()
    monkeypatch.setitem(METHODS, "gradcam", held)
    settings = app_settings(max_queued_per_client=2, max_explanations_per_client=1)
    with TestClient(base_url="http://localhost", app=create_app(settings), raise_server_exceptions=False) as client:
        photo = [upload(encode(chelsea()))]
        slow: list = []
        running = threading.Thread(target=lambda: slow.append(client.post(
            EXPLAIN, files=photo, data={"method": "gradcam", "layer": GRADIENT_LAYER, "outputs": "map"})))
        running.start()
        try:
            assert held.started.wait(timeout=60), "the first explanation never started"
            status, read = post_lazily(client, EXPLAIN, {}, mebibytes=40)
            assert (status, read) == (429, 0)  # its share of the explanation slots
            assert client.post(f"/v1/models/{MODEL}/predict", files=photo).status_code == 200  # one left in the queue
            monkeypatch.setattr(client.app.state.model_queues, "per_client", 1)
            assert post_lazily(client, f"/v1/models/{MODEL}/predict", {}, mebibytes=40) == (429, 0)  # its queue share
        finally:
            held.release.set()
            running.join(timeout=120)
    assert slow[0].status_code == 200
