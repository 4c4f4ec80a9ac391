"""A serving app keeps what start-up made (imports, the default model) out of the garbage
collector's full collections, which scanned all of it with the GIL held, and gives it back at
shutdown, so that nothing it made stays uncollectable after the app is gone."""

from __future__ import annotations

import gc

from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings


def test_start_up_objects_are_frozen_while_serving_and_thawed_at_shutdown(tmp_path):
    with TestClient(base_url="http://localhost", app=create_app(Settings(data_dir=tmp_path))) as client:
        assert client.get("/readyz").status_code == 200
        assert gc.get_freeze_count() > 100_000
    assert gc.get_freeze_count() == 0
