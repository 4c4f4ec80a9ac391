"""Faults under a job's event stream and under a data set ingest, with real processes and a real
full disk: Redis stopped while a client follows a job ends the stream with a problem (and the
job can still be cancelled once Redis is back); a data folder that fills up mid-ingest is a 507
that leaves nothing behind."""

from __future__ import annotations

import json
import time

import pytest

from core.datasets import ArchiveLimits, ingest_archive, list_datasets
from core.errors import GazerError, StorageFailed
from support import shapes_archive
from tests.integration.conftest import wait_for
from tests.integration.test_jobs import long_maximization, submit
from tests.small_disk import small_disk


def events(lines) -> object:
    """(kind, data) per server-sent event; comments skipped."""
    kind = None
    for line in lines:
        if line.startswith("event: "):
            kind = line[len("event: "):]
        elif line.startswith("data: "):
            yield kind, line[len("data: "):]


def test_redis_stopped_under_an_event_stream_ends_it_with_a_problem(api, workers, redis_server):
    workers()
    job = submit(api, "activation-maximization", long_maximization())
    wait_for(api, job["id"], ("running",), timeout=120)
    try:
        with api.stream("GET", f"/v1/jobs/{job['id']}/events") as response:
            assert response.status_code == 200
            received = events(response.iter_lines())
            first_kind, first_data = next(received)
            assert first_kind == "progress" and json.loads(first_data)["id"] == job["id"]
            redis_server.stop()
            stopped = time.monotonic()
            rest = list(received)
            ended_after = time.monotonic() - stopped
    finally:
        if redis_server.process is None:
            redis_server.start()  # same port and AOF
    assert ended_after < 10, ended_after
    last_kind, last_data = rest[-1]
    assert last_kind == "error", rest[-3:]
    problem = json.loads(last_data)
    assert problem["status"] == 503 and problem["type"] == "/problems/queue-unavailable", problem
    assert "connect again later" in problem["detail"]
    assert all(kind == "progress" for kind, _ in rest[:-1])
    # nothing stuck: the job is still there and still stops when asked
    assert api.delete(f"/v1/jobs/{job['id']}").status_code == 202
    assert wait_for(api, job["id"], ("cancelled", "failed", "succeeded"), timeout=60)["state"] == "cancelled"


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MiB tmpfs: a real full disk."""
    with small_disk(tmp_path / "disk", "2m") as mount_point:
        yield mount_point


def test_a_full_disk_during_a_dataset_ingest_is_a_507_and_leaves_nothing(tiny_disk):
    archive = shapes_archive(per_class=15, size=160)  # 45 noisy PNGs, ~2.7 MB, more than the 2 MiB disk holds
    datasets_dir = tiny_disk / "datasets"
    datasets_dir.mkdir()
    limits = ArchiveLimits(max_files=20000, max_total_bytes=2**31, max_image_pixels=40_000_000)
    with pytest.raises(GazerError) as raised:
        ingest_archive(archive, datasets_dir, "full", limits)
    assert isinstance(raised.value, StorageFailed), raised.value
    assert raised.value.status == 507 and "full" in raised.value.detail, raised.value.detail
    assert list(datasets_dir.iterdir()) == []  # no .<id>.partial folder, no data set
    assert list_datasets(datasets_dir) == []
    # the disk is usable again: a small data set fits
    small = ingest_archive(shapes_archive(per_class=2, size=32), datasets_dir, "small", limits)
    assert [item["id"] for item in list_datasets(datasets_dir)] == [small["id"]]
