"""Clients take turns at the workers: through the API with keys, Alice's jobs queued first do not
keep Bob's waiting behind all of them (real Redis, one real worker started after the submits):
once her first has run, his goes next."""

from __future__ import annotations

import time

import pytest

from schemas.api_keys import create_key
from tests.integration.conftest import make_client

MAXIMIZE = {"model": "efficientnet_lite0", "target": {"class": 130}, "steps": 3, "size": 64}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    return path, {name: create_key(path, ["jobs"], label=name)[0] for name in ("alice", "bob")}


def test_a_later_clients_job_runs_second_not_last(redis_server, shared_dir, keys, start_worker):
    path, made = keys
    with make_client(redis_server, shared_dir, api_keys=path) as api:
        def submit(name: str) -> str:
            answer = api.post("/v1/jobs/activation-maximization", json=MAXIMIZE,
                              headers={"Authorization": f"Bearer {made[name]}"})
            assert answer.status_code == 202, answer.text
            return answer.json()["id"]

        def record(job_id: str) -> dict:
            return api.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {made['alice']}"}).json()

        alice = [submit("alice") for _ in range(3)]
        bob = submit("bob")
        worker = start_worker()
        deadline = time.time() + 300
        while (states := [record(job_id)["state"] for job_id in alice]) != ["succeeded"] * 3:
            assert time.time() < deadline and "failed" not in states, states
            time.sleep(0.5)
        bobs = api.get(f"/v1/jobs/{bob}", headers={"Authorization": f"Bearer {made['bob']}"}).json()
        assert bobs["state"] == "succeeded", bobs
        started = sorted([*alice, bob], key=lambda job_id: (record(job_id) if job_id != bob else bobs)["started_at"])
        assert started == [alice[0], bob, alice[1], alice[2]]
        assert f"a message for job {alice[1]} runs job {bob}: its turn" in worker.log()
