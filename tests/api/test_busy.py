"""Explanations take turns in a bounded number of slots; a request that waits too long for
one gets 503, and predictions are not held up behind them."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import MODEL
from support import chelsea, encode, upload

EXPLAIN = f"/v1/models/{MODEL}/explain"


@pytest.fixture(scope="module")
def one_slot_client(data_dir):
    settings = Settings(data_dir=data_dir, max_concurrent_explanations=1, explain_queue_seconds=0.5)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_a_request_that_finds_every_slot_busy_gets_503(one_slot_client):
    photo = [upload(encode(chelsea()))]
    slow: list = []
    # Score-CAM at the head scores 1280 masked inputs: seconds on this CPU.
    running = threading.Thread(target=lambda: slow.append(
        one_slot_client.post(EXPLAIN, files=photo, data={"method": "scorecam", "outputs": "map"})))
    running.start()
    time.sleep(1.0)
    assert running.is_alive(), "the slow explanation ended before the test could queue behind it"

    started = time.perf_counter()
    busy = one_slot_client.post(EXPLAIN, files=photo, data={"method": "gradcam"})
    assert busy.status_code == 503 and busy.headers["content-type"] == "application/problem+json"
    assert busy.json()["type"] == "/problems/busy" and "retry later" in busy.json()["detail"]
    assert 0.5 <= time.perf_counter() - started < 3.0

    predicted = one_slot_client.post(f"/v1/models/{MODEL}/predict", files=photo)
    assert predicted.status_code == 200 and running.is_alive()

    running.join(timeout=120)
    assert slow[0].status_code == 200
    assert one_slot_client.post(EXPLAIN, files=photo, data={"method": "gradcam"}).status_code == 200
