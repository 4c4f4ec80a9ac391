"""Sweeps end to end: a real Redis, two real Celery workers and the real API. Each trial is a
fine-tune job of its own; the sweep's coordinator runs on a thread of the worker that claimed
it, so both workers' one slot runs trials."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import redis

from core.storage import Storage
from support import encode, shape_image, shapes_archive, upload
from tests.integration.conftest import wait_for

TRIAL = {"base_model": "efficientnet_lite0", "strategy": "feature_extraction", "epochs": 2, "batch_size": 8,
         "input_size": 32, "early_stopping_patience": 5, "seed": 3,
         "augmentation": {"rotation": 0, "zoom": 0, "shear": 0, "color_jitter": 0}}


@pytest.fixture(scope="module")
def two_workers(start_worker):
    return [start_worker(), start_worker()]


@pytest.fixture(scope="module")
def dataset(api, two_workers):
    created = api.post("/v1/datasets", files=[upload(shapes_archive(per_class=6, size=48), "shapes.zip",
                                                     "application/zip")], data={"name": "sweep-shapes"})
    assert created.status_code == 201, created.text
    return created.json()["id"]


def submit_sweep(api, body: dict) -> dict:
    response = api.post("/v1/jobs/sweep", json=body)
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/v1/jobs/{response.json()['id']}"
    return response.json()


def trials_of(api, sweep_id: str) -> list[dict]:
    listed = api.get("/v1/jobs", params={"parent": sweep_id})
    assert listed.status_code == 200, listed.text
    return listed.json()["data"]


def wait_for_trials(api, sweep_id: str, running: int, timeout: float = 120) -> list[dict]:
    deadline = time.time() + timeout
    while True:
        trials = trials_of(api, sweep_id)
        if sum(trial["state"] == "running" for trial in trials) >= running:
            return trials
        assert time.time() < deadline, trials
        time.sleep(0.2)


def test_a_sweep_runs_trials_in_parallel_prunes_those_behind_and_serves_the_best(api, dataset, two_workers, shared_dir):
    sweep = submit_sweep(api, {"base": {**TRIAL, "dataset_id": dataset, "output_model": "swept"},
                               "space": {"lr": {"log_uniform": [1e-3, 10]}, "head.dropout": {"uniform": [0, 0.5]}},
                               "trials": 6, "metric": "val_loss", "seed": 7})
    done = wait_for(api, sweep["id"], ("succeeded", "failed", "cancelled"), timeout=300)
    assert done["state"] == "succeeded", (done["error"], done["result"])
    result = done["result"]
    trials = trials_of(api, sweep["id"])
    assert len(trials) == len(result["trials"]) == 6 and result["parallel"] == 2
    assert {trial["type"] for trial in trials} == {"fine-tune"} and {t["parent"] for t in trials} == {sweep["id"]}
    assert {trial["id"] for trial in trials} == {record["job_id"] for record in result["trials"]}
    print("sweep trials:", [(r["number"], r["state"], r["params"], r["value"]) for r in result["trials"]])

    spans = sorted((trial["started_at"], trial["finished_at"]) for trial in trials)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), spans  # two ran at once
    assert any(record["state"] == "pruned" for record in result["trials"]), result["trials"]
    assert {trial["state"] for trial in trials} <= {"succeeded", "pruned"}
    assert all(trial["progress"]["fraction"] == 1.0 for trial in trials if trial["state"] == "succeeded"), trials

    finished = [r for r in result["trials"] if r["state"] == "succeeded" and r["value"] is not None]
    assert result["best"]["value"] == min(record["value"] for record in finished)
    assert set(result["best"]["params"]) == {"lr", "head.dropout"}
    assert set(result["importances"]) <= {"lr", "head.dropout"} and result["importances"]
    assert done["progress"]["trials"]["done"] == 6 and done["progress"]["best"] == result["best"]

    assert result["output_model"] == {"id": "swept", "version": 1}
    assert api.get("/v1/models/swept/versions").json()["count"] == 1  # the losers were never registered
    assert not Storage(shared_dir).job_artifacts(sweep["id"]).exists()  # its trials' weights went, and their folder
    disc = encode(shape_image("disc", np.random.default_rng(5), 64), "PNG")
    served = api.post("/v1/models/swept/predict", files=[upload(disc, "disc.png", "image/png")])
    assert served.status_code == 200, served.text
    assert served.json()["model"] == {"id": "swept", "version": 1}
    # Optuna wrote its own "[I 2026-...] A new study created ..." lines beside the JSON ones
    lines = [line for worker in two_workers for line in worker.log().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(entries) == len(lines), [line for line in lines if not line.startswith("{")][:5]
    assert any(entry["logger"].startswith("optuna") for entry in entries)


def test_cancelling_a_sweep_cancels_its_running_trials(api, dataset, two_workers):
    long_trials = {**TRIAL, "epochs": 200, "early_stopping_patience": 200}
    sweep = submit_sweep(api, {"base": {**long_trials, "dataset_id": dataset, "output_model": "cancelled-sweep"},
                               "space": {"lr": {"log_uniform": [1e-4, 1e-2]}}, "trials": 5, "parallel": 2})
    running = [trial["id"] for trial in wait_for_trials(api, sweep["id"], running=2) if trial["state"] == "running"]
    assert api.delete(f"/v1/jobs/{sweep['id']}").status_code == 202
    ended = wait_for(api, sweep["id"], ("succeeded", "failed", "cancelled"), timeout=60)
    assert ended["state"] == "cancelled", ended
    # its last progress counts the trials it cancelled as ended (it said `running: 2`), not as done
    trials = ended["progress"]["trials"]
    assert trials["running"] == 0 and trials["cancelled"] == 2 and trials["failed"] == 0, ended
    assert ended["progress"]["fraction"] == 0.0, ended  # with trials=2 it said 100%
    for trial_id in running:
        assert api.get(f"/v1/jobs/{trial_id}").json()["state"] == "cancelled"
    assert len(trials_of(api, sweep["id"])) == 2  # no trial was started after the cancel
    assert api.get("/v1/models/cancelled-sweep/versions").status_code == 404


def test_a_sweep_survives_a_worker_killed_under_one_of_its_trials(api, dataset, two_workers, redis_server):
    store = redis.Redis.from_url(redis_server.url, decode_responses=True)
    sweep = submit_sweep(api, {"base": {**TRIAL, "epochs": 4, "early_stopping_patience": 4, "dataset_id": dataset,
                                        "output_model": "survivor"},
                               "space": {"lr": {"log_uniform": [1e-3, 1e-2]}}, "trials": 3, "parallel": 2})
    wait_for(api, sweep["id"], ("running",))
    coordinator = store.hget(f"gazer:job:{sweep['id']}", "worker")
    victim = next(worker for worker in two_workers if not coordinator.endswith(f":{worker.process.pid}"))
    deadline = time.time() + 120
    while True:
        running = [trial for trial in trials_of(api, sweep["id"]) if trial["state"] == "running"]
        lost = [trial for trial in running
                if store.hget(f"gazer:job:{trial['id']}", "worker").endswith(f":{victim.process.pid}")]
        if lost:
            break
        assert time.time() < deadline, trials_of(api, sweep["id"])
        time.sleep(0.1)
    victim.kill()
    done = wait_for(api, sweep["id"], ("succeeded", "failed", "cancelled"), timeout=300)
    assert done["state"] == "succeeded", (done["error"], done["result"])
    states = {record["job_id"]: record["state"] for record in done["result"]["trials"]}
    assert states[lost[0]["id"]] == "failed"
    assert api.get(f"/v1/jobs/{lost[0]['id']}").json()["error"]["type"] == "/problems/worker-lost"
    assert sorted(states.values()) == ["failed", "succeeded", "succeeded"]
    assert done["result"]["output_model"] == {"id": "survivor", "version": 1}


def test_a_sweep_whose_worker_stops_goes_back_to_the_queue_and_picks_up_its_trials(api, dataset, two_workers,
                                                                                    start_worker, redis_server):
    """SIGTERM (a restart, `make run` ending) on the sweep's worker: the sweep was lost with the
    process (its thread a daemon), failing worker-lost, while its trials ran on for nothing. Now
    it goes back to the queue as any job does, keeping its study and trials, and the next worker
    picks up from them: the trials it had launched are among the three, none launched twice."""
    store = redis.Redis.from_url(redis_server.url, decode_responses=True)
    sweep = submit_sweep(api, {"base": {**TRIAL, "epochs": 4, "early_stopping_patience": 4, "dataset_id": dataset,
                                        "output_model": "resumed"},
                               "space": {"lr": {"log_uniform": [1e-3, 1e-2]}}, "trials": 3, "parallel": 2})
    wait_for_trials(api, sweep["id"], running=1)
    coordinator = store.hget(f"gazer:job:{sweep['id']}", "worker")
    stopped = next(worker for worker in two_workers if coordinator.endswith(f":{worker.process.pid}"))
    launched = {trial["id"] for trial in trials_of(api, sweep["id"])}
    stopped.stop()
    assert stopped.process.returncode == 0 and f"job {sweep['id']} goes back to the queue" in stopped.log()
    assert api.get(f"/v1/jobs/{sweep['id']}").json()["state"] == "queued"
    start_worker()  # in its place
    done = wait_for(api, sweep["id"], ("succeeded", "failed", "cancelled"), timeout=300)
    assert done["state"] == "succeeded" and done["attempts"] == 2, (done["error"], done["result"])
    trials = done["result"]["trials"]
    assert sorted(record["number"] for record in trials) == [0, 1, 2], trials
    assert launched <= {record["job_id"] for record in trials} and len(trials_of(api, sweep["id"])) == 3
    assert done["result"]["output_model"] == {"id": "resumed", "version": 1}
    assert not list(store.scan_iter(match=f"gazer:optuna:{sweep['id']}:*"))  # its study, dropped at its end
