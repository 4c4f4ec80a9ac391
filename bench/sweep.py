"""Hyperparameter sweeps and the learning-rate range test on real photos: four Tuxpaint stamp
classes (as bench/fine_tuning.py), a real Redis, real Celery workers and the real API.

  python -m bench.sweep [--trials 12] [--epochs 3] [--input-size 128] [--skip-one-worker] [--skip-lr]

Prints: the default fine-tune's validation accuracy and wall time; the sweep's best validation
accuracy and wall time with 2 workers, and with 1 (their ratio: the goal is >= 1.7x, which two
CPU cores cannot give when each torch training process wants both); then, on three 80/20 splits,
the rate `"lr": "auto"` chose against the default 1e-3 and the validation accuracy of each.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import torch
from fastapi.testclient import TestClient

from bench.common import ignore_progress, report, scratch_dir
from bench.fine_tuning import tuxpaint_archive
from core.datasets import dataset_images, ingest_archive
from core.models.catalog import load_builtin
from core.training.config import FineTuneConfig
from core.training.finetune import fine_tune
from infra.embedded_redis import EmbeddedRedis
from infra.processes import stop_process
from infra.settings import SharedSettings
from service.app import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SPACE = {"lr": {"log_uniform": [1e-4, 3e-2]}, "backbone_lr": {"log_uniform": [1e-5, 1e-3]},
         "weight_decay": {"log_uniform": [1e-6, 1e-2]}, "head.dropout": {"uniform": [0.0, 0.5]},
         "unfreeze_blocks": {"int": [1, 8]}, "optimizer": {"choice": ["adamw", "sgd"]}}


def start_worker(redis_url: str, data_dir: Path, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "GAZER_REDIS_URL": redis_url, "GAZER_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "worker"], cwd=ROOT, env=env, stdout=open(log_path, "wb"),
                               stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while "ready." not in log_path.read_text(errors="replace"):
        if process.poll() is not None or time.time() > deadline:
            raise SystemExit(f"the worker did not start: {log_path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.2)
    return process


def wait(api: TestClient, job_id: str, timeout: float = 3600) -> dict:
    deadline = time.time() + timeout
    while (job := api.get(f"/v1/jobs/{job_id}").json())["state"] in ("queued", "running"):
        if time.time() > deadline:
            raise SystemExit(f"job {job_id} did not end in {timeout} s: {job}")
        time.sleep(0.5)
    if job["state"] != "succeeded":
        raise SystemExit(f"job {job_id} ended {job['state']}: {job.get('error')}")
    return job


def timed_job(api: TestClient, kind: str, body: dict) -> tuple[dict, float]:
    started = time.perf_counter()
    response = api.post(f"/v1/jobs/{kind}", json=body)
    if response.status_code != 202:
        raise SystemExit(response.text)
    job = wait(api, response.json()["id"])
    return job, time.perf_counter() - started


def sweeps(args: argparse.Namespace) -> None:
    base = {"strategy": "fine_tune", "epochs": args.epochs, "batch_size": 16, "input_size": args.input_size,
            "early_stopping_patience": args.epochs, "seed": 0}
    folder = scratch_dir("gazer-bench-sweep-")
    data_dir = folder / "data"
    with ExitStack() as stack:
        redis_server = stack.enter_context(EmbeddedRedis(folder / "redis"))
        api = stack.enter_context(TestClient(create_app(Settings(data_dir=data_dir, redis_url=redis_server.url)),
                                             base_url="http://localhost"))
        dataset = api.post("/v1/datasets", files={"file": ("tuxpaint.zip", tuxpaint_archive(), "application/zip")},
                           data={"name": "tuxpaint4"}).json()
        workers = [start_worker(redis_server.url, data_dir, folder / f"worker-{n}.log") for n in range(2)]
        stack.callback(lambda: [stop_process(worker) for worker in workers])
        body = {**base, "dataset_id": dataset["id"]}
        default, default_seconds = timed_job(api, "fine-tune", {**body, "output_model": "bench-default"})
        swept, two_seconds = timed_job(api, "sweep", {"base": {**body, "output_model": "bench-swept"}, "space": SPACE,
                                                      "trials": args.trials, "parallel": 2, "seed": 0})
        rows = [("data set", f"{dataset['counts']}, 80/20, {args.epochs} epochs at {args.input_size} px, batch 16"),
                ("default fine-tune", f"val accuracy {default['result']['metrics']['val_accuracy']:.3f}, "
                                      f"{default_seconds:.0f} s"),
                (f"sweep, {args.trials} trials, 2 workers",
                 f"best val accuracy {swept['result']['best']['value']:.3f}, {two_seconds:.0f} s; "
                 f"best {swept['result']['best']['params']}"),
                ("trials", ", ".join(f"{t['state']}:{t['value'] if t['value'] is None else round(t['value'], 3)}"
                                     for t in swept["result"]["trials"])),
                ("importances (fANOVA)", str(swept["result"]["importances"]))]
        for label, text in rows:  # as they come: a long run cut short still tells something
            print(f"{label}: {text}", flush=True)
        if not args.skip_one_worker:
            stop_process(workers.pop())
            time.sleep(SharedSettings().job_lease_seconds + 1)  # the stopped worker drops out of the live count
            _, one_seconds = timed_job(api, "sweep", {"base": {**body, "output_model": "bench-swept-1"},
                                                      "space": SPACE, "trials": args.trials, "parallel": 1, "seed": 0})
            rows += [(f"sweep, {args.trials} trials, 1 worker", f"{one_seconds:.0f} s"),
                     ("1 worker / 2 workers", f"{one_seconds / two_seconds:.2f}x  (goal >= 1.7x; {os.cpu_count()} "
                                              f"cores, torch in each worker uses all of them)")]
        report("hyperparameter sweep (TPE, median pruning) against the default fine-tune", rows)


def lr_tests(args: argparse.Namespace) -> None:
    datasets_dir = scratch_dir("gazer-bench-lr-")
    dataset = ingest_archive(tuxpaint_archive(), datasets_dir, "tuxpaint4", SharedSettings().archive_limits)
    classes, items = dataset_images(datasets_dir, dataset["id"])
    spec, base = load_builtin("efficientnet_lite0")
    rows = []
    for seed in range(3):
        scores = {}
        for lr in ("auto", 1e-3):
            config = FineTuneConfig(dataset_id=dataset["id"], output_model="bench", strategy="fine_tune",
                                    epochs=args.epochs, batch_size=16, input_size=args.input_size, lr=lr,
                                    early_stopping_patience=args.epochs, seed=seed)
            started = time.perf_counter()
            metrics = fine_tune(config, spec, base, classes, items, ignore_progress, lambda: False,
                                torch.device("cpu"), SharedSettings().max_image_pixels).metrics
            scores[lr] = (metrics["val_accuracy"], time.perf_counter() - started, metrics.get("lr_finder"))
        finder = scores["auto"][2]
        rows.append((f"split {seed}", f"auto chose {finder['chosen']:.3g} ({len(finder['lrs'])} steps"
                                      f"{', diverged' if finder['diverged'] else ''}): val accuracy "
                                      f"{scores['auto'][0]:.3f} in {scores['auto'][1]:.0f} s; default 1e-3: "
                                      f"{scores[1e-3][0]:.3f} in {scores[1e-3][1]:.0f} s"))
        print(f"{rows[-1][0]}: {rows[-1][1]}", flush=True)
    report(f"learning-rate range test against the default rate, {args.epochs} epochs at {args.input_size} px", rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--skip-one-worker", action="store_true")
    parser.add_argument("--skip-lr", action="store_true")
    parser.add_argument("--skip-sweep", action="store_true")
    args = parser.parse_args()
    started = time.time()
    if not args.skip_sweep:
        sweeps(args)
    if not args.skip_lr:
        lr_tests(args)
    print(f"\n(took {time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
