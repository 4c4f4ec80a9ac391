"""A job followed to its end: a progress bar from its events, then what it made."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from typing import Any

from tqdm import tqdm

from gazer.calls import RECONNECT_SECONDS
from gazer.cli.output import say, shown
from gazer.client import Client, default_url
from gazer.errors import ApiError, EndedEarly
from schemas.jobs import Job


INTERRUPTED = 130  # what a shell reports for a command stopped by SIGINT


def describe_progress(job: Job) -> str:
    progress = job.progress or {}
    parts = [job.state]
    trials = progress.get("trials")
    if isinstance(trials, dict) and "total" in trials:  # a sweep: its phase is "trials", which this says
        parts.append(describe_trials(trials, progress.get("best"), job.params.get("metric", "val_accuracy")))
    elif "phase" in progress and not job.finished:
        parts.append(str(progress["phase"]))
    if "epoch" in progress:
        epochs = job.params.get("epochs")
        parts.append(f"epoch {progress['epoch']}" + (f"/{epochs}" if epochs else ""))
    if "step" in progress and "steps" in progress:
        parts.append(f"step {progress['step']}/{progress['steps']}")
    if "images" in progress and "total" in progress:
        parts.append(f"{progress['images']}/{progress['total']} images")
    for name, value in (progress.get("metrics") or {}).items():
        if isinstance(value, float):
            parts.append(f"{name} {value:.3g}")
    return " ".join(parts)


def describe_trials(trials: dict[str, Any], best: Any, metric: str) -> str:
    """A sweep's progress: `2/3 trials done, 1 running, 1 pruned, best val_accuracy 0.750 (trial 1)`."""
    said = [f"{trials.get('done', 0)}/{trials['total']} trials done"]
    said += [f"{trials[state]} {state}" for state in ("running", "pruned", "failed", "cancelled") if trials.get(state)]
    if isinstance(best, dict) and isinstance(best.get("value"), (int, float)):
        said.append(f"best {metric} {best['value']:.3f} (trial {best.get('number')})")
    return ", ".join(said)


def describe_end(job: Job) -> str:
    """What a job that ended made: the model a fine-tune trained, else where its result is."""
    if job.state == "succeeded" and job.type == "fine-tune" and job.result and "model" in job.result:
        made = job.result["model"]
        accuracy = (job.result.get("metrics") or {}).get("val_accuracy")
        scored = f" (val_accuracy {accuracy:.3f})" if isinstance(accuracy, (int, float)) else ""
        return f"job {job.id} succeeded: model {made['id']}@{made['version']}{scored}"
    if job.state == "succeeded" and job.type == "sweep" and job.result and job.result.get("output_model"):
        made, best = job.result["output_model"], job.result.get("best") or {}
        scored = f" (trial {best['number']}, {job.result.get('metric')} {best['value']:.3f})" \
            if isinstance(best.get("value"), (int, float)) else ""
        return (f"job {job.id} succeeded: model {made['id']}@{made['version']}{scored}; "
                f"every trial: gazer jobs show {job.id}")
    if job.error:
        return f"job {job.id} {job.state}: {job.error.get('detail', job.error)}"
    if job.state == "succeeded" and job.result:
        return f"job {job.id} succeeded; its result: gazer jobs show {job.id}"
    return f"job {job.id} {job.state}"


def progress_bar(job_id: str) -> tqdm:
    """On a terminal, a bar redrawn in place; elsewhere (a log, a pipe) none, where its redraws
    ran into one line: `follow` writes a line of its own each tenth of the way and each phase."""
    return tqdm(total=100, desc=f"job {job_id}", unit="%", file=sys.stderr, disable=not sys.stderr.isatty(),
                bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}{postfix}")


def follow(client: Client, job_id: str, url: str) -> int:
    """A progress bar from the job's events until it ends: 0 if it succeeded, 1 if not, 130 on
    Ctrl-C, which leaves the job running."""
    last: Job | None = None
    bar: tqdm | None = None  # drawn from the job's first event: a job that is not there gets none
    told: tuple | None = None  # without a terminal: the tenth, state and phase last written
    try:
        with ExitStack() as closing:  # the bar closed, its line ended, however following ends
            def server_stopping() -> None:
                said = f"the server is stopping: following again once it answers (up to {RECONNECT_SECONDS:.0f} s)"
                if bar is None or bar.disable:  # no bar, or none drawn (standard error is no terminal)
                    say(said, file=sys.stderr, flush=True)
                else:
                    bar.set_postfix_str(said)

            for event in client.events(job_id, on_server_stopping=server_stopping):
                if bar is None:
                    bar = closing.enter_context(progress_bar(job_id))
                last = event.job
                percent, described = round(100 * (last.progress or {}).get("fraction", 0.0), 1), describe_progress(last)
                if not bar.disable:
                    bar.n = percent
                    bar.set_postfix_str(shown(described), refresh=False)
                    bar.refresh()
                elif (now := (percent // 10, last.state, (last.progress or {}).get("phase"))) != told:
                    told = now
                    say(f"job {job_id} {percent:3.0f}% {described}", file=sys.stderr, flush=True)
    except EndedEarly as error:
        say(f"gazer: {error.detail}; see: gazer jobs show {job_id}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        target = "" if url == default_url() else f" --url {url}"
        say("", f"job {job_id} is still running; cancel it with: gazer{target} jobs cancel {job_id}",
            file=sys.stderr, flush=True)
        return INTERRUPTED
    if last is None or not last.finished:
        say(f"gazer: the event stream of job {job_id} ended early; see: gazer jobs show {job_id}", file=sys.stderr)
        return 1
    say(describe_end(last), file=sys.stdout if last.state == "succeeded" else sys.stderr)
    if last.state == "succeeded":
        print_plain_name_elsewhere(client, last)
    return 0 if last.state == "succeeded" else 1


def print_plain_name_elsewhere(client: Client, job: Job) -> None:
    """A model the job published that its plain name does not mean: the name is pinned to another
    version, or (not pinned) means its newest version that loads, a newer one or an older one."""
    made = (job.result or {}).get("model") or (job.result or {}).get("output_model")
    if not isinstance(made, dict):
        return
    name, version = made["id"], made["version"]
    try:
        found = client.versions(name)
    except ApiError as error:
        if error.status == 403:  # a key of the 'jobs' scope alone may not read models: nothing more to say
            return
        raise
    if found.default == version:
        return
    if found.pinned is not None and found.pinned == found.default:
        say(f"{name} still means {name}@{found.default} (pinned): ask for {name}@{version}, "
            f"or serve it as {name} with: gazer models pin {name} {version}")
    elif found.default > version:
        say(f"{name} means its newest version, {name}@{found.default}, published since: ask for {name}@{version}")
    else:
        state = next((listed.state for listed in found.data if listed.version == version), "gone")
        say(f"{name} means {name}@{found.default}, its newest version that loads ({name}@{version}: {state}; "
            f"see gazer models versions {name})")
