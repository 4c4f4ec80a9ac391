from __future__ import annotations

import os

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

MODEL = "efficientnet_lite0"


def pytest_configure(config):
    # The floor of free disk is tested on a small disk of its own (integration/test_disk_floor.py). Elsewhere the
    # data folders share the host's disk, where the product's 1 GiB floor would only tie the suite to how full it is.
    os.environ.setdefault("GAZER_MIN_FREE_DISK_BYTES", str(64 * 1024**2))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("gazer-data")


@pytest.fixture(scope="session")
def client(data_dir):
    """The real app with the real EfficientNet-Lite0, over the ASGI interface."""
    with TestClient(base_url="http://localhost", app=create_app(Settings(data_dir=data_dir)), raise_server_exceptions=False) as test_client:
        yield test_client
