"""Two API processes and two workers on one Redis and one data folder (what `docker compose
up --scale api=2 --scale worker=2` runs): the API keeps no state of its own, so a model
fine-tuned through one API is served by the other, and either sees every job."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from infra.processes import stop_process
from support import encode, shape_image, shapes_archive
from tests.integration.conftest import ROOT
from tests.live_service import free_port


@pytest.fixture(scope="module")
def two_apis(redis_server, shared_dir, start_worker, tmp_path_factory):
    start_worker()
    start_worker()
    apis = []
    for index in range(2):
        port = free_port()
        log = tmp_path_factory.mktemp(f"api{index}") / "api.log"
        env = {**os.environ, "PORT": str(port), "GAZER_REDIS_URL": redis_server.url,
               "GAZER_DATA_DIR": str(shared_dir), "PYTHONPATH": str(ROOT)}
        process = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env,
                                   stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        apis.append((process, f"http://127.0.0.1:{port}", log))
    for process, url, log in apis:
        deadline = time.time() + 180
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, log.read_text()
            time.sleep(0.5)
    yield [url for _, url, _ in apis]
    for process, _, _ in apis:
        stop_process(process)


def test_a_model_fine_tuned_through_one_api_is_served_by_the_other(two_apis):
    first, second = two_apis
    assert httpx.get(f"{first}/readyz").json()["workers"] == 2
    with httpx.Client(base_url=first, timeout=60) as one, httpx.Client(base_url=second, timeout=60) as other:
        dataset = one.post("/v1/datasets", files={"file": ("shapes.zip", shapes_archive(per_class=4))}).json()
        assert other.get(f"/v1/datasets/{dataset['id']}").status_code == 200
        job = one.post("/v1/jobs/fine-tune", json={"dataset_id": dataset["id"], "output_model": "scaled",
                                                   "epochs": 1, "batch_size": 4, "input_size": 64,
                                                   "strategy": "feature_extraction"}).json()
        deadline = time.time() + 300
        while (seen := other.get(f"/v1/jobs/{job['id']}").json())["state"] not in ("succeeded", "failed"):
            assert time.time() < deadline, seen
            time.sleep(0.5)
        assert seen["state"] == "succeeded", seen
        disc = encode(shape_image("disc", np.random.default_rng(0)), "PNG")
        served = other.post("/v1/models/scaled/predict", files={"file": ("disc.png", disc, "image/png")})
        assert served.status_code == 200, served.text
        assert served.json()["model"] == {"id": "scaled", "version": 1}
