"""One live service (`python -m service.launch`: embedded Redis, one worker, the API) for the
client and CLI tests, and real photos written as files."""

from __future__ import annotations

from pathlib import Path

import pytest

from gazer.client import Client
from support import chelsea, coffee, encode
from tests.live_service import LiveService


# Event streams end after this long (`event: expired`), so that following a job of more than a few
# seconds, as the fine-tunes here take, goes over several streams as an hour-long job's would.
EVENT_STREAM_SECONDS = 4


@pytest.fixture(scope="session")
def live(tmp_path_factory):
    with LiveService(tmp_path_factory.mktemp("gazer-live"), event_stream_seconds=EVENT_STREAM_SECONDS) as service:
        yield service


@pytest.fixture(scope="session")
def gazer(live):
    with Client(live.url) as client:
        yield client


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    paths = {"chelsea": folder / "chelsea.jpg", "coffee": folder / "coffee.jpg"}
    paths["chelsea"].write_bytes(encode(chelsea()))
    paths["coffee"].write_bytes(encode(coffee()))
    return paths
