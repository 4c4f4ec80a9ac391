"""Hyperparameter sweeps on Optuna: a TPE sampler and a median pruner over a study kept in
Redis (Optuna's journal storage), one study per sweep.

The coordinator asks the study for trials and runs each as a fine-tune job of its own (its
params carry `trial`, its record `parent` = the sweep), keeping up to `parallel` of them queued
or running, so every worker takes one. Each trial reports its epochs to the study itself
(`SweepHost.report_epoch`) and stops `pruned` when the pruner says so; the coordinator tells the
study how each trial ended, and at the end registers the best trial's model as the base's
`output_model`, drops the other trials' weights and measures the parameters' importances.

When its worker is told to stop (a restart, `make run` ending), a sweep goes back to the queue
as any job does, but keeps its study and its trials' weights, and leaves its trials running: the
next worker to take it picks up from them.
"""

from __future__ import annotations

import logging
import math
import shutil
import threading
import time
import warnings
from contextlib import suppress
from typing import Any, Callable

import optuna
import redis
from optuna.importance import FanovaImportanceEvaluator, get_param_importances
from optuna.pruners import MedianPruner
from optuna.samplers import TPESampler
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalRedisBackend
from optuna.trial import TrialState

from core.errors import InvalidRequest, NotFound
from core.job_runners import FINE_TUNE, JobContext
from core.jobs import TERMINAL, JobCancelled, Progress, ShouldStop
from core.sweep_trials import load_trial, trial_folder, trials_folder
from core.storage import Storage
from core.sweeps import Dimension, NoTrialSucceeded, SweepConfig, parse_space, sweep_config, with_values
from infra.job_store import JobStore

log = logging.getLogger(__name__)
POLL_SECONDS = 0.5
_PREFIX = "gazer:optuna:"
_ENDS = {"succeeded": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL,
         "cancelled": TrialState.FAIL}


def study_name(sweep_id: str) -> str:
    return f"sweep-{sweep_id}"


def _drop_study(client: redis.Redis, sweep_id: str) -> None:
    keys = list(client.scan_iter(match=f"{_PREFIX}{sweep_id}:*", count=1000))
    if keys:
        client.delete(*keys)


def drop_ended_studies(store: JobStore, storage: Storage) -> list[str]:
    """The studies, and the trials' weights, left behind by sweeps that ended without dropping
    theirs (lost with their worker, cancelled while back in the queue, Redis refusing the drop) or
    whose record is gone; a queued or running sweep keeps its own. Returns the sweeps' ids."""
    sweeps = {key[len(_PREFIX):].split(":", 1)[0] for key in store.redis.scan_iter(match=f"{_PREFIX}*", count=1000)}
    ended = []
    for sweep_id in sorted(sweeps):
        try:
            state = store.get(sweep_id)["state"]  # a lost one is reaped here
        except NotFound:
            state = None
        if state is None or state in TERMINAL:
            _drop_weights(storage, sweep_id)
            _drop_study(store.redis, sweep_id)
            ended.append(sweep_id)
    return ended


def startup_trials(trials: int) -> int:
    """Trials that finish before the pruner or TPE's model has a say (a fifth, 2 to 10)."""
    return max(2, min(10, trials // 5))


def make_sampler(config: SweepConfig) -> TPESampler:
    # constant_liar: trials running in parallel are not all sampled at the same point
    return TPESampler(seed=config.seed, n_startup_trials=startup_trials(config.trials), constant_liar=True)


def make_pruner(startup: int) -> MedianPruner:
    return MedianPruner(n_startup_trials=startup, n_warmup_steps=0)


def suggest(trial: optuna.Trial, dimension: Dimension) -> Any:
    if dimension.kind == "choice":
        return trial.suggest_categorical(dimension.name, list(dimension.options))
    if dimension.kind == "int":
        return trial.suggest_int(dimension.name, int(dimension.low), int(dimension.high))
    return trial.suggest_float(dimension.name, dimension.low, dimension.high, log=dimension.kind == "log_uniform")


class SweepInterrupted(JobCancelled):
    """Its worker is stopping: the sweep goes back to the queue, its study and trials kept."""


class SweepHost:
    """What a coordinator needs beyond core: the job store, a way to send a job's message to the
    queue (`send(job_id)`), the Redis holding the studies, the most trials a sweep that names no
    `parallel` runs at once (beside it, within its client's active jobs), and the worker's
    `stopping` event."""

    def __init__(self, store: JobStore, send: Callable[[str], None], redis_url: str, most_parallel: int,
                 stopping: threading.Event | None = None) -> None:
        self.store = store
        self.send = send
        self.redis_url = redis_url
        self.most_parallel = most_parallel
        self.stopping = stopping or threading.Event()

    def storage(self, sweep_id: str) -> JournalStorage:
        with warnings.catch_warnings():  # "experimental" since optuna 3.1: a WARNING line per worker, not news to read
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            backend = JournalRedisBackend(self.redis_url, prefix=f"{_PREFIX}{sweep_id}:")
        return JournalStorage(backend)

    def submit_trial(self, sweep_id: str, params: dict[str, Any], owner: str | None) -> str:
        job = self.store.create(FINE_TUNE, params, owner, parent=sweep_id)
        try:
            self.send(job["id"])
        except Exception:  # kombu's and redis's connection errors alike: no record waits for nothing
            self.store.discard(job["id"])
            raise
        with suppress(redis.RedisError):  # else it waits from when a worker receives its message
            self.store.wait_for_turn(job)
        return job["id"]

    def report_epoch(self, trial: dict[str, Any], epoch: int, value: float) -> bool:
        """A trial's epoch, reported to its study; whether the pruner stops it here."""
        storage, name = self.storage(trial["sweep"]), study_name(trial["sweep"])
        study = optuna.load_study(study_name=name, storage=storage, pruner=make_pruner(int(trial["startup_trials"])))
        trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(name),
                                                                   int(trial["number"]))
        reported = optuna.trial.Trial(study, trial_id)
        reported.report(float(value), epoch)
        return reported.should_prune()


class _Coordinator:
    def __init__(self, job_id: str, config: SweepConfig, params: dict[str, Any], host: SweepHost,
                 context: JobContext) -> None:
        self.job_id, self.config, self.base, self.host, self.context = job_id, config, params["base"], host, context
        self.dimensions = parse_space(config.space)
        self.owner = host.store.get(job_id)["owner"]
        self.study = optuna.create_study(
            study_name=study_name(job_id), storage=host.storage(job_id), sampler=make_sampler(config),
            pruner=make_pruner(startup_trials(config.trials)),
            direction="maximize" if config.maximize else "minimize", load_if_exists=True)
        self.trials: list[dict[str, Any]] = []   # one record per trial, in the order asked
        self.running: dict[str, tuple[int, dict[str, Any]]] = {}  # child job id -> its trial's number

    def resume(self) -> int:
        """The trials an earlier run of this sweep launched (none on its first run), with the
        study's word on each: how many it launched. A trial asked for but never submitted (the
        worker stopped in between) is told failed, and another is asked in its place."""
        children = {job["params"]["trial"]["number"]: job
                    for job in self.host.store.list(parent=self.job_id, limit=self.config.trials)}
        for frozen in self.study.get_trials(deepcopy=False):
            child = children.get(frozen.number)
            if child is None:
                if frozen.state == TrialState.RUNNING:
                    self.study.tell(frozen.number, state=TrialState.FAIL)
                continue
            record = {"number": frozen.number, "job_id": child["id"], "params": dict(frozen.params),
                      "state": child["state"], "value": self._value(child)}
            self.trials.append(record)
            if frozen.state == TrialState.RUNNING:  # its end not yet told: collect tells it
                self.running[child["id"]] = (frozen.number, record)
        return len(self.trials)

    def launch(self) -> None:
        trial = self.study.ask()
        values = {dimension.name: suggest(trial, dimension) for dimension in self.dimensions}
        marker = {"sweep": self.job_id, "number": trial.number,
                  "metric": self.config.metric, "startup_trials": startup_trials(self.config.trials)}
        try:
            child = self.host.submit_trial(self.job_id, {**with_values(self.base, values), "trial": marker},
                                           self.owner)
        except Exception:
            self.study.tell(trial, state=TrialState.FAIL)
            raise
        record = {"number": trial.number, "job_id": child, "params": values, "state": "queued", "value": None}
        self.trials.append(record)
        self.running[child] = (trial.number, record)

    def collect(self) -> None:
        """Tells the study about every trial that ended since the last look."""
        for child, (trial, record) in list(self.running.items()):
            job = self.host.store.get(child)
            record["state"] = job["state"]
            if job["state"] not in TERMINAL:
                continue
            del self.running[child]
            record["value"] = self._value(job)
            if job["state"] == "succeeded" and record["value"] is None:  # it diverged (NaN): no value to compare
                self.study.tell(trial, state=TrialState.FAIL)
            elif job["state"] == "succeeded":
                self.study.tell(trial, record["value"])
            else:
                self.study.tell(trial, state=_ENDS[job["state"]])

    def _value(self, job: dict[str, Any]) -> float | None:
        """A trial job's metric: its result's where it succeeded, its last epoch's where it was
        pruned (None where it diverged, or ended otherwise)."""
        if job["state"] == "succeeded":
            return job["result"]["metrics"][self.config.metric]
        if job["state"] == "pruned":
            return (job["progress"].get("metrics") or {}).get(self.config.metric)
        return None

    def ranked(self) -> list[dict[str, Any]]:
        """The trials that finished with a value, best first."""
        done = [record for record in self.trials if record["state"] == "succeeded" and record["value"] is not None]
        return sorted(done, key=lambda record: -record["value"] if self.config.maximize else record["value"])

    def best(self) -> dict[str, Any] | None:
        ranked = [record for record in self.ranked() if not record.get("refused")]
        return {key: ranked[0][key] for key in ("number", "job_id", "value", "params")} if ranked else None

    def report(self, progress: Progress, stopped: int = 0) -> None:
        """`stopped`: trials the sweep's own cancel ended, which count as ended but not as done."""
        count = {state: sum(record["state"] == state for record in self.trials) for state in TERMINAL}
        done = sum(count.values()) - stopped
        progress(done / self.config.trials, phase="trials", trials={
            "total": self.config.trials, "done": done, "running": len(self.running), "pruned": count["pruned"],
            "succeeded": count["succeeded"], "failed": count["failed"], "cancelled": count["cancelled"]},
            best=self.best())

    def cancel_running(self, wait_seconds: float) -> int:
        """Cancels the running trials and waits for their ends; how many ended cancelled."""
        stopping = [record for _, record in self.running.values()]
        for child in self.running:
            self.host.store.cancel(child)
        deadline = time.monotonic() + wait_seconds
        while self.running and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
            self.collect()
        return sum(record["state"] == "cancelled" for record in stopping)

    def interrupted(self) -> bool:
        return self.host.stopping.is_set()

    def run(self, progress: Progress, should_stop: ShouldStop, parallel: int) -> None:
        launched = self.resume()
        while launched < self.config.trials or self.running:
            if should_stop():
                if self.interrupted():
                    raise SweepInterrupted("this worker is stopping: the sweep goes back to the queue; its trials "
                                           "run on")
                stopped = self.cancel_running(wait_seconds=2 * self.host.store.lease_seconds + 10)
                self.report(progress, stopped)  # its last word: the trials it cancelled, no longer running
                raise JobCancelled("the sweep was cancelled; its running trials were cancelled too")
            while launched < self.config.trials and len(self.running) < parallel:
                self.launch()
                launched += 1
            try:
                self.collect()
            except redis.RedisError as error:  # Redis restarting, say: look again next time
                log.warning("sweep %s: its trials could not be read (%s); trying again", self.job_id, error)
            self.report(progress)
            if self.running:
                time.sleep(POLL_SECONDS)

    def importances(self) -> dict[str, float]:
        """fANOVA's share of the metric's variance per parameter, over the finished trials (the
        parameters that took more than one value there)."""
        complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        varied = [d.name for d in self.dimensions if len({repr(t.params.get(d.name)) for t in complete}) > 1]
        if len(complete) < 2 or not varied:
            return {}
        if len({trial.value for trial in complete}) == 1:  # fANOVA refuses: no variance for anything to explain
            return {name: 0.0 for name in varied}
        found = get_param_importances(self.study, evaluator=FanovaImportanceEvaluator(seed=self.config.seed),
                                      params=varied)
        return {name: round(float(value), 4) for name, value in found.items() if math.isfinite(value)}

    def publish_best(self, should_stop: ShouldStop) -> dict[str, Any]:
        """Registers the best trial's model as the base's output_model; one the registry refuses
        (its torch and ONNX Runtime logits disagree: weights blown up by a huge learning rate,
        say) gives way to the next best."""
        for record in self.ranked():
            spec, network, metrics = load_trial(trial_folder(self.context.storage, {"sweep": self.job_id,
                                                                                    "number": record["number"]}))
            if should_stop():
                if self.interrupted():
                    raise SweepInterrupted("this worker is stopping: the sweep goes back to the queue")
                raise JobCancelled("the sweep was stopped before its best model was published")
            try:
                published = self.context.registry.register_network(spec, network, metrics)
            except InvalidRequest as refused:
                log.warning("sweep %s: trial %d's model was refused (%s)", self.job_id, record["number"],
                            refused.detail)
                record["refused"] = refused.detail
                continue
            return {"id": published.id, "version": published.version}
        raise NoTrialSucceeded(f"none of the {len(self.trials)} trials gave a model to publish "
                               f"({', '.join(sorted({r['state'] for r in self.trials}))})")


def run_sweep(job_id: str, params: dict[str, Any], progress: Progress, should_stop: ShouldStop,
              context: JobContext, host: SweepHost) -> dict[str, Any]:
    config = sweep_config(params)
    parallel = config.parallel or max(1, min(len(host.store.live_workers()), host.most_parallel))
    coordinator = _Coordinator(job_id, config, params, host, context)
    kept = False  # for the next run, which picks up from the study and the trials
    try:
        coordinator.run(progress, should_stop, parallel)
        importances = coordinator.importances()
        model = coordinator.publish_best(should_stop)
    except SweepInterrupted:
        kept = not host.store.cancel_requested(job_id)  # cancelled as well: it goes back no more
        raise
    finally:  # cancelled or crashed too: its end, written next, cancels the trials still running
        if not kept:
            _drop_trials(job_id, host, context)
    coordinator.report(progress)
    return {"output_model": model, "metric": config.metric, "parallel": parallel, "best": coordinator.best(),
            "importances": importances, "trials": coordinator.trials}


def _drop_weights(storage: Storage, sweep_id: str) -> None:
    """Its trials' weights, about 13 MB each for EfficientNet-Lite0."""
    shutil.rmtree(trials_folder(storage, sweep_id), ignore_errors=True)
    with suppress(OSError):  # the sweep's own folder, unless something else is in it
        trials_folder(storage, sweep_id).parent.rmdir()


def _drop_trials(job_id: str, host: SweepHost, context: JobContext) -> None:
    """The ended sweep's study, and its trials' weights (the winner's is published by now)."""
    _drop_weights(context.storage, job_id)
    try:
        _drop_study(host.store.redis, job_id)
    except redis.RedisError as error:
        log.warning("sweep %s: its study could not be removed from Redis (%s)", job_id, error)
