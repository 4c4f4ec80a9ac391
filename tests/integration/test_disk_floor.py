"""A data folder under its floor of free space (GAZER_MIN_FREE_DISK_BYTES), on a real small disk:
uploads, data sets and jobs are refused with 507 before anything is written, a job queued while
there was room fails at its start with the same problem, /metrics shows the free space, and once
space is freed everything is taken again."""

from __future__ import annotations

import os

from support import shapes_archive, upload
from tests.api.test_datasets import zip_of
from tests.api.test_metrics import scrape, value
from tests.integration.conftest import Worker, make_client, wait_for
from tests.integration.test_jobs import long_maximization
from tests.small_disk import small_disk

MiB = 1024**2
FLOOR = 48 * MiB


def gauge(api, name: str) -> float:
    return value(scrape(api), name)


def fill_to_floor(disk, storage_free: float, leave: int) -> None:
    """A file that leaves `leave` bytes free on `disk`."""
    with open(disk / "filler", "wb") as filler:
        os.posix_fallocate(filler.fileno(), 0, int(storage_free) - leave)


def test_under_the_floor_nothing_new_is_stored_until_space_is_freed(redis_server, tmp_path):
    with small_disk(tmp_path / "disk", "128m") as disk, \
            make_client(redis_server, disk, min_free_disk_bytes=FLOOR) as api:  # the built-in model's ONNX: 18 MB
        assert gauge(api, "gazer_storage_min_free_bytes") == FLOOR
        queued = api.post("/v1/jobs/activation-maximization", json=long_maximization(steps=5))
        assert queued.status_code == 202, queued.text  # no worker yet: it waits, queued while there was room
        assert api.post("/v1/datasets", files=[upload(shapes_archive(per_class=2), "s.zip", "application/zip")]
                        ).status_code == 201
        # over the room left, counting its declared length: refused before its body is read
        big = api.post("/v1/datasets", files=[upload(os.urandom(80 * MiB), "big.zip", "application/zip")])
        assert big.status_code == 507 and big.json()["type"].endswith("/storage-full"), big.text
        assert "80.0 MiB were asked for" in big.json()["detail"]
        # no declared length: refused as its body arrives
        body = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"c.zip\"\r\n\r\n" + \
            os.urandom(80 * MiB) + b"\r\n--b--\r\n"
        chunked = api.post("/v1/datasets", content=iter([body]),
                           headers={"content-type": "multipart/form-data; boundary=b"})
        assert chunked.status_code == 507 and chunked.json()["type"].endswith("/storage-full"), chunked.text
        # small, but 72 MiB once unpacked: refused as it is written, and nothing is left
        zeros = zip_of({f"zeros/{index}.png": bytes(9 * MiB) for index in range(8)})
        unpacked = api.post("/v1/datasets", files=[upload(zeros, "z.zip", "application/zip")])
        assert unpacked.status_code == 507 and unpacked.json()["type"].endswith("/storage-full"), unpacked.text
        assert len(list((disk / "datasets").iterdir())) == 1  # the first one alone: no .partial folder

        fill_to_floor(disk, gauge(api, "gazer_storage_free_bytes"), leave=FLOOR - 4 * MiB)
        assert gauge(api, "gazer_storage_free_bytes") < FLOOR
        refused = [api.post("/v1/datasets", files=[upload(shapes_archive(per_class=2), "s.zip", "application/zip")]),
                   api.post("/v1/models", data={"name": "mine", "architecture": "resnet18"},
                            files={"weights": ("w.safetensors", b"0" * 1000)}),
                   api.post("/v1/jobs/activation-maximization", json=long_maximization(steps=5))]
        for response in refused:
            assert response.status_code == 507, response.text
            problem = response.json()
            assert problem["type"].endswith("/storage-full") and "GAZER_MIN_FREE_DISK_BYTES" in problem["detail"]
        assert len(api.get("/v1/datasets").json()["data"]) == 1 and api.get("/v1/jobs").json()["count"] == 1
        assert not (disk / "models").exists()

        worker = Worker(redis_server.url, disk, tmp_path / "worker.log", min_free_disk_bytes=FLOOR)
        try:
            failed = wait_for(api, queued.json()["id"], ("failed", "succeeded"), timeout=120)
        finally:
            worker.stop()
        assert failed["state"] == "failed" and failed["error"]["type"].endswith("/storage-full"), failed
        assert not (disk / "artifacts" / failed["id"]).exists()

        (disk / "filler").unlink()
        assert gauge(api, "gazer_storage_free_bytes") > FLOOR
        again = api.post("/v1/datasets", files=[upload(shapes_archive(per_class=2), "s.zip", "application/zip")])
        assert again.status_code == 201, again.text
        job = api.post("/v1/jobs/activation-maximization", json=long_maximization(steps=5))
        assert job.status_code == 202, job.text
        assert api.delete(f"/v1/jobs/{job.json()['id']}").status_code == 202


def test_a_job_that_fills_the_disk_fails_as_a_full_data_folder(redis_server, tmp_path):
    """No floor here: the disk fills while a data set explanation writes its heatmaps."""
    with small_disk(tmp_path / "disk", "128m") as disk, make_client(redis_server, disk, min_free_disk_bytes=0) as api:
        created = api.post("/v1/datasets", files=[upload(shapes_archive(per_class=10), "s.zip", "application/zip")])
        assert created.status_code == 201, created.text
        fill_to_floor(disk, gauge(api, "gazer_storage_free_bytes"), leave=8 * 1024)
        job = api.post("/v1/jobs/explain-dataset", json={"dataset_id": created.json()["id"], "method": "cam"})
        assert job.status_code == 202, job.text
        worker = Worker(redis_server.url, disk, tmp_path / "worker.log", min_free_disk_bytes=0)
        try:
            failed = wait_for(api, job.json()["id"], ("failed", "succeeded"), timeout=120)
        finally:
            worker.stop()
        assert failed["state"] == "failed" and failed["error"]["type"].endswith("/storage-failed"), failed
        assert failed["error"]["status"] == 507 and "full" in failed["error"]["detail"]
        assert not (disk / "artifacts" / failed["id"]).exists()  # what it had written is freed
