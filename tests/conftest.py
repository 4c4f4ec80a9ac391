from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest
from fastapi.testclient import TestClient

from core.models.onnx_export import reference_onnx
from core.storage import Storage
from infra.embedded_redis import EmbeddedRedis
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
def timing_reference(data_dir) -> Path:
    """What an ONNX upload's check times its runs against, exported once into the session's cache."""
    return reference_onnx(Storage(data_dir).onnx_cache)


@pytest.fixture(scope="session")
def session_redis(data_dir):
    """The Redis of every app on the session's data folder, as API processes on one folder share
    one (an embedded one each would be a second on the folder: refused)."""
    with EmbeddedRedis(Storage(data_dir).redis) as server:
        yield server.url


@pytest.fixture(scope="session")
def app_settings(data_dir, session_redis) -> Callable[..., Settings]:
    """Settings of an app on the session's data folder and Redis, with the keywords given."""
    def settings(**overrides: object) -> Settings:
        return Settings(data_dir=data_dir, redis_url=session_redis, **overrides)
    return settings


@pytest.fixture(scope="session")
def client(app_settings):
    """The real app with the real EfficientNet-Lite0, over the ASGI interface."""
    app = create_app(app_settings())
    with TestClient(base_url="http://localhost", app=app, raise_server_exceptions=False) as test_client:
        yield test_client
