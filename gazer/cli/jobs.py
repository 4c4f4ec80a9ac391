"""The job commands (finetune, sweep, explain-dataset, maximize) and gazer jobs."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from collections import Counter
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Sequence

from gazer.classes import as_index
from gazer.cli.arguments import class_index, key_values, merged
from gazer.cli.following import follow
from gazer.cli.output import say, say_json, table
from gazer.client import Client
from gazer.errors import ApiError
from schemas.jobs import Job


def fine_tune_options(args: argparse.Namespace) -> dict[str, Any]:
    options = {name: getattr(args, name) for name in args.fine_tune_flags if getattr(args, name) is not None}
    return merged(options, key_values(args.set, "--set"))


def submitted(client: Client, job: Job, args: argparse.Namespace) -> int:
    if args.no_follow:  # the id alone, for a script: J=$(gazer finetune ... --no-follow)
        say(job.id)
        return 0
    say(f"job {job.id} {job.state}", flush=True)
    return follow(client, job.id, args.url)


def cmd_finetune(client: Client, args: argparse.Namespace) -> int:
    return submitted(client, client.fine_tune(args.dataset_id, args.output_model, **fine_tune_options(args)), args)


def cmd_sweep(client: Client, args: argparse.Namespace) -> int:
    try:
        space = json.loads(args.space)
    except json.JSONDecodeError as error:
        raise SystemExit(f"gazer: --space is not JSON: {error}") from None
    base = {"dataset_id": args.dataset_id, "output_model": args.output_model, **fine_tune_options(args)}
    options = {name: getattr(args, name) for name in ("trials", "parallel", "metric")
               if getattr(args, name) is not None}
    if args.sweep_seed is not None:
        options["seed"] = args.sweep_seed
    return submitted(client, client.sweep(base, space, **options), args)


def cmd_explain_dataset(client: Client, args: argparse.Namespace) -> int:
    given = {"method": args.method, "layer": args.layer, "batch_size": args.batch_size,
             "options": key_values(args.option, "--option") or None}
    options = {name: value for name, value in given.items() if value is not None}
    return submitted(client, client.explain_dataset(args.dataset_id, args.model, faithfulness=args.faithfulness,
                                                    **options), args)


def cmd_maximize(client: Client, args: argparse.Namespace) -> int:
    if bool(args.classes) == bool(args.layer) or bool(args.channels) != bool(args.layer):
        raise SystemExit("gazer: give --class (repeatable), or --layer with --channel (repeatable)")
    target = {"classes": job_classes(client, args.model, args.classes)} if args.classes \
        else {"layer": args.layer, "channels": args.channels}
    options = {"model": args.model, **key_values(args.option, "--option")}
    return submitted(client, client.activation_maximization(target, **options), args)


def job_classes(client: Client, model: str, given: Sequence[str]) -> list[int]:
    """Each class's index, for a job: a label is looked up in the model's labels, which a key with only the
    'jobs' scope may not read, though it may submit the job with the indexes."""
    try:  # an index is sent as given, looked up in nothing the 'jobs' scope may not read
        return [index if (index := as_index(named)) is not None else class_index(client, model, named)
                for named in given]
    except ApiError as error:
        if error.status != 403:
            raise
        raise SystemExit(f"gazer: a class given by its label is looked up in {model}'s labels, which needs a key "
                         f"with the 'predict' scope ({error.detail}); give the class by its index (e.g. --class 130): "
                         f"the job itself needs only the 'jobs' scope") from None


# the job types whose commands here are named otherwise
JOB_TYPE_OF_COMMAND = {"finetune": "fine-tune", "maximize": "activation-maximization"}


def cmd_jobs_ls(client: Client, args: argparse.Namespace) -> int:
    found = client.jobs(args.state, args.type, args.parent, args.limit, args.before)
    rows = [(job.id, job.type, job.state, f"{100 * (job.progress or {}).get('fraction', 0):.0f}%",
             time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.created_at))) for job in found.data]
    say(*table(("id", "type", "state", "progress", "created"), rows))
    if found.next is not None:
        say(f"older jobs: gazer jobs ls --before {found.next} (with the same filters)", file=sys.stderr)
    return 0


def cmd_jobs_show(client: Client, args: argparse.Namespace) -> int:
    say_json(client.job(args.job_id))
    return 0


def cmd_jobs_cancel(client: Client, args: argparse.Namespace) -> int:
    job = client.cancel(args.job_id)
    say(f"job {job.id} {job.state}" + (" (cancel requested: it stops at its next step)"
                                        if job.cancel_requested and not job.finished else ""))
    return 0


def cmd_jobs_follow(client: Client, args: argparse.Namespace) -> int:
    return follow(client, args.job_id, args.url)


def cmd_jobs_artifacts(client: Client, args: argparse.Namespace) -> int:
    """Every file the job wrote, written under --output (default a folder named after the job): each a
    new file unless --force; a name the service should never list is skipped, and the status is 1."""
    job = client.job(args.job_id)
    if not job.finished:
        say(f"gazer: job {job.id} is {job.state}: its files come when it ends (gazer jobs follow {job.id})",
            file=sys.stderr)
        return 1
    names = client.artifacts(job.id)
    if not names:
        say(f"job {job.id} ({job.type}, {job.state}) wrote no files", file=sys.stderr)
        return 0
    twice = next((name for name, count in Counter(names).items() if count > 1), None)
    if twice is not None:
        raise SystemExit(f"gazer: the service listed {twice!r} twice among job {job.id}'s files; nothing written")
    folder = Path(args.output or args.job_id)
    if folder.exists() and not folder.is_dir():
        raise SystemExit(f"gazer: {folder} is a file: --output names the folder the job's files go in")
    folder.mkdir(parents=True, exist_ok=True)
    refused = [name for name in names if not plain_file_name(name)]
    for name in names:
        if name in refused:
            say(f"gazer: skipped {name!r}, which the service listed: not a plain file name", file=sys.stderr)
            continue
        try:
            save_artifact(client, args.job_id, name, folder / name, replace=args.force)
        except FileExistsError:
            raise SystemExit(f"gazer: {folder / name} exists; --force replaces the job's files") from None
        say(folder / name)
    return 1 if refused else 0


def plain_file_name(name: str) -> bool:
    """Whether an artifact's name, as the server listed it, can be a file in the output folder: the
    service lists only plain names (no leading dot, no folder or drive, nothing unprintable); any other
    would write outside the folder, or a dotfile such as .bashrc in it."""
    return (name != "" and name.isprintable() and not name.startswith(".") and not any(sep in name for sep in "/\\")
            and name == PurePosixPath(name).name == PureWindowsPath(name).name)


def save_artifact(client: Client, job_id: str, name: str, path: Path, replace: bool) -> None:
    """The artifact written to `path`, a new file; with `replace`, written beside it and then put in
    place of whatever is there (a link is replaced, never written through). A download that fails
    leaves nothing behind."""
    written = path.with_name(f".gazer-{secrets.token_hex(8)}.part") if replace else path
    file = open(written, "xb")  # never an existing file, nor through a link
    try:
        with file:
            client.write_artifact(job_id, name, file)
        if replace:
            os.replace(written, path)
    except BaseException:
        written.unlink(missing_ok=True)
        raise
