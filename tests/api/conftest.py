"""An app of its own with one explanation slot, for the tests of busy answers and slot metrics."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.app import create_app

QUEUE_SECONDS = 0.5


@pytest.fixture(scope="module")
def one_slot_client(app_settings):
    settings = app_settings(max_concurrent_explanations=1, explain_queue_seconds=QUEUE_SECONDS)
    with TestClient(base_url="http://localhost", app=create_app(settings), raise_server_exceptions=False) as client:
        yield client
