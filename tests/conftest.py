from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

MODEL = "efficientnet_lite0"


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("gazer-data")


@pytest.fixture(scope="session")
def client(data_dir):
    """The real app with the real EfficientNet-Lite0, over the ASGI interface."""
    with TestClient(base_url="http://localhost", app=create_app(Settings(data_dir=data_dir)), raise_server_exceptions=False) as test_client:
        yield test_client
